"""Keys never leave the secret store: a CLI that prints keys — its own and another profile's — in every field
it has (auth error, usage-limit message, model, session id, window name, stderr, its own transcript) leaves
them in no file under FLEETD_HOME but the opt-in secret store, no database row, no log, no API response."""

from __future__ import annotations

import json
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import Daemon, capture_folder, standin_env, wait_until

KEY_A = "sk-ant-api03-LEAKTEST-AAAA-0123456789"
KEY_B = "sk-ant-api03-LEAKTEST-BBBB-9876543210"
KEYS = (KEY_A, KEY_B)
REDACTED = "[REDACTED]"


@pytest.fixture(scope="module")
def leaky() -> Iterator[Daemon]:
    capture_folder("cc_ok_stream")  # a missing fixture fails, never skips
    root = Path(tempfile.mkdtemp(prefix="flk-", dir="/tmp"))
    standin_dir = root / "standin"
    standin_dir.mkdir()
    # Both CLIs may print both keys (a shared file, an inherited environment): each profile's output is
    # scrubbed of every profile's key.
    (standin_dir / "leak_keys").write_text("\n".join(KEYS) + "\n")
    d = Daemon(root / "home", "--kill-grace", "0.5s", "--stop-grace", "1s", "--heartbeat-interval", "1s")
    d.env.update(standin_env(standin_dir))
    d.start()
    d.standin_dir = standin_dir  # type: ignore[attr-defined]
    d.root = root  # type: ignore[attr-defined]
    yield d
    d.stop()
    shutil.rmtree(root, ignore_errors=True)


def set_scenario(d: Daemon, profile: str, scenario: str) -> None:
    (d.standin_dir / f"{profile}.scenario").write_text(scenario)  # type: ignore[attr-defined]


def db_rows(d: Daemon) -> dict[str, list[dict[str, object]]]:
    """Every row of every table, read beside the running daemon (WAL included)."""
    conn = sqlite3.connect(f"file:{d.home / 'fleetd.db'}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {t: [dict(r) for r in conn.execute(f'SELECT * FROM "{t}"')] for t in tables}
    finally:
        conn.close()


def agent_records(d: Daemon, profile: str) -> list[dict[str, object]]:
    return [r for r in db_rows(d)["usage_records"] if r["profile"] == profile and r["source"] == "agent"]


def assert_no_key(where: str, text: str | bytes) -> None:
    # As the CLI prints it, and JSON-escaped as the stand-in also prints it (the raw log kept that form).
    for key in KEYS:
        for form in (key, f"\\u{ord(key[0]):04x}{key[1:]}"):
            needle = form.encode() if isinstance(text, bytes) else form
            assert needle not in text, f"{form} leaked into {where}"


def add_keyed(d: Daemon, keys: dict[str, str]) -> None:
    """Claude Code profiles, each with its key and a config directory of its own."""
    for name, key in keys.items():
        d.cli("profile", "add", name, "--backend", "claude_code", "--api-key-stdin",
              "--config-dir", str(d.root / f"cfg-{name}"), input=key + "\n")  # type: ignore[attr-defined]  # fmt: skip


def test_keys_printed_in_every_field_reach_nothing(leaky: Daemon) -> None:
    d = leaky
    add_keyed(d, {"leak_a": KEY_A, "leak_b": KEY_B})
    set_scenario(d, "leak_a", "leak_auth")
    set_scenario(d, "leak_b", "leak_limit +2")
    d.cli("loop", "add", "leak_auth", "--every", "1h", "--backend", "claude_code", "--profile", "leak_a",
          "--prompt", "go")  # fmt: skip
    d.cli("loop", "add", "leak_limit", "--every", "1h", "--backend", "claude_code", "--profile", "leak_b",
          "--prompt", "go")  # fmt: skip

    auth_run = d.wait_run(d.json("loop", "run", "leak_auth")["id"])
    assert auth_run["status"] == "failed"
    (auth_attempt,) = auth_run["attempt_list"]
    assert auth_attempt["error_class"] == "auth"
    # The fields were there to leak: each now holds the mark instead of a key.
    assert auth_attempt["session_id"] == REDACTED and auth_attempt["model"] == REDACTED
    assert auth_attempt["error"].startswith(f"auth: Invalid API key {REDACTED} {REDACTED} {REDACTED} {REDACTED}")

    limit_id = d.json("loop", "run", "leak_limit")["id"]
    wait_until(lambda: d.json("runs", "show", str(limit_id))["status"] == "waiting", timeout=30, what="waiting")
    set_scenario(d, "leak_b", "leak_ok")
    limit_run = d.wait_run(limit_id, timeout=30)
    assert limit_run["status"] == "succeeded"
    limited, ok = limit_run["attempt_list"]
    assert limited["error_class"] == "rate_limited" and REDACTED in limited["error"]
    assert [w["name"] for w in limited["windows"]] == [REDACTED]
    assert ok["session_id"] == REDACTED and ok["model"] == REDACTED
    # The final message held both keys, one of them only as a JSON escape the parser decoded.
    assert ok["result_text"] == f"done; my keys are {REDACTED} {REDACTED} {REDACTED} {REDACTED}"
    # The heartbeat read the agent's own transcript, whose ids are made of keys too.
    (record,) = wait_until(lambda: agent_records(d, "leak_b"), timeout=20, what="the transcript's usage record")
    assert record["session_id"] == f"t-{REDACTED}"

    usage = d.cli("usage", "--json").stdout
    assert REDACTED in usage  # leak_a's reason: the auth message
    responses = {
        "usage --json": usage,
        "events --json": d.cli("events", "--json", "--limit", "1000").stdout,
        "profile list --json": d.cli("profile", "list", "--json").stdout,
        "runs list --json": d.cli("runs", "list", "--json").stdout,
        "usage": d.cli("usage").stdout,
        "events": d.cli("events", "--limit", "1000").stdout,
    }
    for run_id in (auth_run["id"], limit_id):
        responses[f"runs show {run_id} --json"] = d.cli("runs", "show", str(run_id), "--json").stdout
        responses[f"runs show {run_id}"] = d.cli("runs", "show", str(run_id)).stdout
        responses[f"runs logs {run_id}"] = d.cli("runs", "logs", str(run_id)).stdout  # rendered: escapes decoded
        responses[f"runs logs {run_id} --raw"] = d.cli("runs", "logs", str(run_id), "--raw").stdout
    responses["runs result"] = d.cli("runs", "result", str(limit_id)).stdout
    responses["runs result --json"] = d.cli("runs", "result", str(limit_id), "--json").stdout
    for name in ("leak_a", "leak_b"):
        responses[f"profile show {name} --json"] = d.cli("profile", "show", name, "--json").stdout
    for where, text in responses.items():
        assert_no_key(where, text)
    assert f"warning: using key {REDACTED} {REDACTED}" in responses[f"runs logs {auth_run['id']}"]

    for table, rows in db_rows(d).items():
        for row in rows:
            assert_no_key(f"table {table}", json.dumps(row, default=str))
    files = [p for p in d.home.rglob("*") if p.is_file() and p.name != "secrets.json"]
    assert any(p.name == "fleetd.db-wal" for p in files) and any(p.name == "daemon-test.log" for p in files)
    for path in files:
        assert_no_key(str(path), path.read_bytes())
    stored = json.loads((d.home / "secrets.json").read_text())
    assert set(stored.values()) == set(KEYS)


def test_a_key_the_verify_command_prints_reaches_neither_the_records_nor_the_repair_prompt(leaky: Daemon) -> None:
    # The verify command's output went unscrubbed into the attempt's findings, the run's error and route, its events,
    # and the repair prompt sent to the provider (another profile's key, there).
    d = leaky
    add_keyed(d, {"gate_p": KEY_B, "gate_q": KEY_A})
    set_scenario(d, "gate_p", "ok")
    printed = d.root / "verify-says"  # type: ignore[attr-defined]
    printed.write_text(f"token is {KEY_A}\n")
    d.cli("loop", "add", "gated_leak", "--every", "1h", "--paused", "--chain", "gate_p", "--prompt", "fix it",
          "--verify", f"cat {printed}; exit 1", "--repair", "1")  # fmt: skip
    run = d.wait_run(d.json("loop", "run", "gated_leak")["id"], timeout=30)
    assert run["status"] == "failed"
    first, repair = run["attempt_list"]
    assert first["findings"].endswith(f"token is {REDACTED}") and repair["accepted"] is False
    calls = [json.loads(line) for line in (d.standin_dir / "calls.jsonl").read_text().splitlines()]  # type: ignore[attr-defined]
    prompts = [" ".join(c["argv"]) for c in calls if c["env"].get("FLEETD_RUN_ID") == str(run["id"])]
    assert len(prompts) == 2 and f"token is {REDACTED}" in prompts[1]
    for where, text in {
        "prompts": "\n".join(prompts),
        "runs show": d.cli("runs", "show", str(run["id"])).stdout,
        "runs show --json": d.cli("runs", "show", str(run["id"]), "--json").stdout,
        "runs list --json": d.cli("runs", "list", "--json").stdout,
        "events --json": d.cli("events", "--json", "--limit", "1000").stdout,
        "runs logs": d.cli("runs", "logs", str(run["id"]), "--raw").stdout,
    }.items():
        assert_no_key(where, text)
    for table, rows in db_rows(d).items():
        for row in rows:
            assert_no_key(f"table {table}", json.dumps(row, default=str))


def test_a_key_written_into_the_verify_command_reaches_none_of_the_runs_records(leaky: Daemon) -> None:
    # The command's own text is quoted in the attempt's findings, the run's error, its events, its log and the repair
    # prompt: a key typed into it literally reached another CLI's transcript. (The loop's definition keeps it as typed.)
    d = leaky
    add_keyed(d, {"vgate_p": KEY_B})
    set_scenario(d, "vgate_p", "ok")
    d.cli("loop", "add", "typed_leak", "--every", "1h", "--paused", "--chain", "vgate_p", "--prompt", "fix it",
          "--verify", f"echo checking; test \"$T\" = {KEY_A}", "--repair", "1")  # fmt: skip
    run = d.wait_run(d.json("loop", "run", "typed_leak")["id"], timeout=30)
    assert run["status"] == "failed"
    first = run["attempt_list"][0]
    assert first["findings"] is not None and f"= {REDACTED}" in first["findings"], first["findings"]
    calls = [json.loads(line) for line in (d.standin_dir / "calls.jsonl").read_text().splitlines()]  # type: ignore[attr-defined]
    prompts = [" ".join(c["argv"]) for c in calls if c["env"].get("FLEETD_RUN_ID") == str(run["id"])]
    for where, text in {
        "prompts": "\n".join(prompts),
        "runs show": d.cli("runs", "show", str(run["id"])).stdout,
        "runs show --json": d.cli("runs", "show", str(run["id"]), "--json").stdout,
        "events --json": d.cli("events", "--json", "--limit", "1000").stdout,
        "runs logs": d.cli("runs", "logs", str(run["id"]), "--raw").stdout,
    }.items():
        assert_no_key(where, text)
    for table, rows in db_rows(d).items():
        for row in rows if table != "loops" else []:
            assert_no_key(f"table {table}", json.dumps(row, default=str))
