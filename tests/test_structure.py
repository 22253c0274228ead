"""The package's edges, read from the source (ast): what each part may import at module level, and
that backend knowledge stays in the adapters."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

FLEETD = Path(__file__).resolve().parents[1] / "fleetd"
AGENT_BACKENDS = {"claude_code", "codex", "gemini", "aider", "openai_compat"}
# The plain records and the tiny helpers they use: the bottom of the package (records at the bottom).
RECORD_MODULES = {"fleetd.records", "fleetd.errors", "fleetd.timefmt"}
ALLOWED = {
    # the router decides and does no I/O: it sees only the records and its own modules
    "routing": {"fleetd.routing", *RECORD_MODULES},
    # the store builds its rows from the records and nothing above them
    "store": {"fleetd.store", *RECORD_MODULES},
    # the records are a leaf: nothing of fleetd but each other and the tiny helpers
    "records": RECORD_MODULES,
    # the CLI starts fast and stays out of the daemon
    # (and the status vocabulary, a leaf of `typing` alone, for the help text)
    # (and the status vocabulary and money's text, leaves of `typing` and `math` alone)
    "cli": {
        "fleetd",
        "fleetd.cli",
        "fleetd.paths",
        "fleetd.timefmt",
        "fleetd.daemon.options",
        "fleetd.records.status",
        "fleetd.records.money",
    },
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


def _all_imports(path: Path) -> set[str]:
    """fleetd modules imported anywhere in the file: in functions and under `if TYPE_CHECKING:` too."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fleetd"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("fleetd")}
    return found


@pytest.mark.parametrize("part", sorted(ALLOWED))
def test_each_part_imports_only_what_it_may(part: str) -> None:
    bad = {
        f"{path.relative_to(FLEETD.parent)}: {module}"
        for path in sorted((FLEETD / part).rglob("*.py"))
        for module in _module_imports(path)
        if not _allowed(module, ALLOWED[part])
    }
    assert not bad, sorted(bad)


def test_the_records_are_a_leaf_even_for_lazy_and_typing_imports() -> None:
    """A record module that imported from above, even inside a function, would let the store and the
    pure decision code pull in I/O again."""
    bad = {
        f"{path.relative_to(FLEETD.parent)}: {module}"
        for path in sorted((FLEETD / "records").rglob("*.py"))
        for module in _all_imports(path)
        if not _allowed(module, RECORD_MODULES)
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


def test_every_package_is_a_regular_package() -> None:
    """A directory of modules without `__init__.py` is an implicit namespace package: imports still work,
    so only this notices (and a namespace package has no place for the package's docstring)."""
    missing = sorted(
        str(d.relative_to(FLEETD.parent))
        for d in [FLEETD, *(p for p in FLEETD.rglob("*") if p.is_dir())]
        if any(d.glob("*.py")) and not (d / "__init__.py").exists()
    )
    assert missing == []


def test_the_daemon_loads_the_gateway_and_webhook_clients_only_when_used() -> None:
    """aiohttp (the gateway) and httpx (webhooks) cost the daemon's start-up ~0.3 s and ~10 MB: a daemon
    that serves neither must not import them (tests/e2e/test_gateway_lazy.py checks the running one)."""
    code = "import sys, fleetd.daemon.main; print(' '.join(m for m in ('aiohttp', 'httpx') if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert loaded == []
