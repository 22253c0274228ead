"""`render_line` per agent CLI: the real captures rendered (golden), tool calls one line each, junk never raises."""

from __future__ import annotations

import json
import random
from collections.abc import Callable

import pytest

from fleetd.backends.parsers import claude_code, codex, gemini
from fleetd.backends.registry import ADAPTERS
from tests.harness import capture_folder

Render = Callable[[str], str | None]


def rendered(render: Render, capture: str, stream: str = "stdout.txt") -> list[str]:
    text = (capture_folder(capture) / stream).read_text(encoding="utf-8", errors="replace")
    return [shown for line in text.splitlines() if (shown := render(line)) is not None]


GOLDEN: dict[tuple[str, str], tuple[Render, list[str]]] = {
    ("cc_ok_stream", "stdout.txt"): (
        claude_code.render_line,
        ["session 44ce97b6-bd26-4495-bf03-46c93a098e16 (claude-opus-5-5, in /home/user/project)", "hi",
         "done: 1 turn(s), 0.1s, $0.0009"],
    ),
    ("cc_529", "stdout.txt"): (
        claude_code.render_line,
        ["session ead6aaf9-bd7f-431c-83c9-c3432254f77a (claude-opus-5-5, in /home/user/project)",
         "retrying after API error 529 (1 of 2)", "retrying after API error 529 (2 of 2)",
         *["error: API Error: 529 Overloaded (fake). This is a server-side issue, usually temporary — try again in a "
           "moment. If it persists, check your inference gateway (127.0.0.1:18080)."] * 2],
    ),
    ("codex_ok_codex-prof-quiet", "stdout.txt"): (
        codex.render_line,
        ["session 01a2006f-309f-7bf3-840a-01322a7670c6", "hi", "done: tokens in 111 out 33"],
    ),
    ("codex_quota", "stdout.txt"): (
        codex.render_line,
        ["session 01a20060-daf0-70d3-8148-a2ca2696027d",
         "error: Model metadata for `fake-model` not found. Defaulting to fallback metadata; this can degrade "
         "performance and cause issues.",
         *["error: Quota exceeded. Check your plan and billing details."] * 2],
    ),
    ("gemini_ok_json", "stdout.txt"): (gemini.render_line, ["hi"]),
    ("gemini_ok_stream", "stdout.txt"): (
        gemini.render_line,
        ["session 0ed4c557-1c7b-4bfd-831c-06399ecfbedb (auto)", "h", "i", "done: tokens in 202 out 14"],
    ),
}  # fmt: skip


@pytest.mark.parametrize("key", sorted(GOLDEN), ids=lambda k: k[0])
def test_captures_render_to_golden_text(key: tuple[str, str]) -> None:
    render, expected = GOLDEN[key]
    assert rendered(render, *key) == expected


def test_gemini_json_error_on_stderr_keeps_the_log_text_and_the_error() -> None:
    shown = rendered(gemini.render_line, "gemini_429_json", "stderr.txt")
    assert shown[-1] == "error: Resource has been exhausted (e.g. check quota). (fake) Suggested retry after 1s."
    assert "Ripgrep is not available. Falling back to GrepTool." in shown  # plain lines stay
    assert not any(line.strip() in ("{", "}", '"code": 429') for line in shown)  # the document's frame goes


def _line(obj: object) -> str:
    return json.dumps(obj)


TOOL_CALLS: dict[str, tuple[Render, str, str | None]] = {
    "claude_bash": (claude_code.render_line, _line({"type": "assistant", "message": {"content": [
        {"type": "text", "text": "Running the tests."},
        {"type": "tool_use", "name": "Bash", "input": {"command": "pytest -q", "description": "run tests"}}]}}),
        "Running the tests.\n→ Bash: pytest -q"),
    "claude_edit": (claude_code.render_line, _line({"type": "assistant", "message": {"content": [
        {"type": "tool_use", "name": "Edit", "input": {"file_path": "/w/a.py", "old_string": "x"}}]}}),
        "→ Edit: /w/a.py"),
    "claude_thinking_only": (claude_code.render_line, _line({"type": "assistant", "message": {"content": [
        {"type": "thinking", "thinking": "hmm"}]}}), None),
    "claude_tool_error": (claude_code.render_line, _line({"type": "user", "message": {"content": [
        {"type": "tool_result", "is_error": True, "content": "command not found:\n pytest"}]}}),
        "  ✗ command not found: pytest"),
    "claude_tool_ok_hidden": (claude_code.render_line, _line({"type": "user", "message": {"content": [
        {"type": "tool_result", "content": "3 passed"}]}}), None),
    "claude_plain_text": (claude_code.render_line, "Claude AI usage limit reached|1700000000",
                          "Claude AI usage limit reached|1700000000"),
    "codex_command_failed": (codex.render_line, _line({"type": "item.completed", "item": {
        "type": "command_execution", "command": "bash -lc 'pytest -q'", "exit_code": 1}}),
        "→ shell: bash -lc 'pytest -q'\n  ✗ exit 1"),
    "codex_file_change": (codex.render_line, _line({"type": "item.completed", "item": {
        "type": "file_change", "changes": [{"path": "a.py", "kind": "update"}, {"path": "b.py", "kind": "add"}]}}),
        "→ edit: update a.py, add b.py"),
    "codex_reasoning_hidden": (codex.render_line, _line({"type": "item.completed", "item": {
        "type": "reasoning", "text": "thinking"}}), None),
    "codex_started_hidden": (codex.render_line, _line({"type": "item.started", "item": {
        "type": "command_execution", "command": "ls"}}), None),
    "gemini_tool_use": (gemini.render_line, _line({"type": "tool_use", "tool_name": "run_shell_command",
        "parameters": {"command": "pytest -q"}}), "→ run_shell_command: pytest -q"),
    "a_long_argument_is_cut": (claude_code.render_line, _line({"type": "assistant", "message": {"content": [
        {"type": "tool_use", "name": "Bash", "input": {"command": "echo " + "x" * 500}}]}}),
        "→ Bash: echo " + "x" * 154 + "…"),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(TOOL_CALLS))
def test_render_line(name: str) -> None:
    render, line, expected = TOOL_CALLS[name]
    assert render(line) == expected


JUNK = [
    "", "{", '{"type": "assistant", "message": 5}', '{"type": "assistant", "message": {"content": [1, null]}}',
    '{"type": "result", "num_turns": "many", "duration_ms": {}}', '{"type": "item.completed", "item": []}',
    '{"type": "user", "message": {"content": [{"type": "tool_result", "is_error": true, "content": [{}]}]}}',
    '{"type": "tool_result", "status": "error", "error": 3}', "[" * 10_000, "{" * 10_000, "\x00\ufffd",
    *(random.Random(seed).randbytes(300).decode("utf-8", errors="replace") for seed in range(5)),
]  # fmt: skip


@pytest.mark.parametrize("render", [claude_code.render_line, codex.render_line, gemini.render_line],
                         ids=["claude", "codex", "gemini"])  # fmt: skip
@pytest.mark.parametrize("line", JUNK)
def test_junk_never_raises(render: Render, line: str) -> None:
    shown = render(line)
    assert shown is None or isinstance(shown, str)


def test_each_adapter_names_its_renderer() -> None:
    renderers = {name: adapter.log_renderer() for name, adapter in ADAPTERS.items()}
    assert renderers == {"command": None, "claude_code": claude_code.render_line, "codex": codex.render_line,
                         "gemini": gemini.render_line, "aider": None, "openai_compat": None}  # fmt: skip
