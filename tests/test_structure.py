"""The package's edges, read from the source (ast): what each part may import at module level, and
that backend knowledge stays in the adapters."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

FLEETD = Path(__file__).resolve().parents[1] / "fleetd"
AGENT_BACKENDS = {"claude_code", "codex", "gemini", "aider", "openai_compat"}
# Plain data and pure helpers the store may build its rows from (records at the bottom).
RECORD_MODULES = {
    "fleetd.errors", "fleetd.timefmt", "fleetd.loops.model", "fleetd.profiles.model", "fleetd.heartbeat.limits",
    "fleetd.heartbeat.state", "fleetd.heartbeat.windows", "fleetd.backends.result", "fleetd.routing.chain",
    "fleetd.routing.circuit",
}  # fmt: skip
ALLOWED = {
    # the router decides and does no I/O: it sees only its own records
    "routing": {"fleetd.routing", "fleetd.errors", "fleetd.timefmt"},
    "store": {"fleetd.store", *RECORD_MODULES},
    # the CLI starts fast and stays out of the daemon
    "cli": {"fleetd", "fleetd.cli", "fleetd.paths", "fleetd.timefmt"},
}


def _module_imports(path: Path) -> set[str]:
    """fleetd modules imported at module level, outside `if TYPE_CHECKING:`."""
    found: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fleetd"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("fleetd")}
    return found


def _allowed(module: str, allowed: set[str]) -> bool:
    return any(module == a or module.startswith(a + ".") for a in allowed if a != "fleetd") or module == "fleetd"


@pytest.mark.parametrize("part", sorted(ALLOWED))
def test_each_part_imports_only_what_it_may(part: str) -> None:
    bad = {
        f"{path.relative_to(FLEETD.parent)}: {module}"
        for path in sorted((FLEETD / part).rglob("*.py"))
        for module in _module_imports(path)
        if not _allowed(module, ALLOWED[part])
    }
    assert not bad, sorted(bad)


def test_nothing_outside_the_adapters_names_an_agent_backend() -> None:
    """Adding a backend is one module and one registry line: no other code branches on a name."""
    named = []
    for path in sorted(FLEETD.rglob("*.py")):
        if FLEETD / "backends" in path.parents:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in AGENT_BACKENDS:
                named.append(f"{path.relative_to(FLEETD.parent)}:{node.lineno} {node.value!r}")
    assert not named, named
