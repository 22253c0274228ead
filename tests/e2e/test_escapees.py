"""Escapees: a process that leaves the run's session AND drops its environment (so no tag) still dies
with its run, and with a crashed daemon's run at the next start. Only a cgroup per run can find it,
so these tests need a writable cgroup v2 subtree (the fallback sweep cannot, by design)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from fleetd import paths
from fleetd.daemon.main import instance_tag
from fleetd.loops import cgroups
from tests.harness import Daemon, alive, wait_until

MakeDaemon = Callable[..., Daemon]

pytestmark = pytest.mark.skipif(
    cgroups.base_dir() is None, reason="no writable cgroup v2 subtree here: runs fall back to the tag sweep"
)


def _escapee(pid_file: Path) -> str:
    """A new session, an empty environment, the pid recorded, then sleep: invisible to the tag sweep."""
    return f"setsid env -i /bin/sh -c 'echo $$ > {pid_file}; exec sleep 1000'"


def _read_pid(pid_file: Path) -> int:
    return wait_until(lambda: pid_file.exists() and pid_file.read_text().strip().isdigit() and
                      int(pid_file.read_text()), what="the escapee to start")  # fmt: skip


def _run_cgroups(d: Daemon) -> list[Path]:
    subtree = cgroups.subtree(instance_tag(paths.resolve(d.env)))
    return sorted(subtree.glob("run-*")) if subtree is not None else []


def test_a_setsid_env_i_escapee_dies_with_its_run(make_daemon: MakeDaemon, tmp_path: Path) -> None:
    d = make_daemon()
    pid_file = tmp_path / "escapee.pid"
    # The command waits for the escapee to be under way: killed earlier, it would leave no pid to check.
    wait = f"while [ ! -s {pid_file} ]; do sleep 0.01; done"
    d.cli("loop", "add", "escape", "--every", "1h", "--command", f"{_escapee(pid_file)} & {wait}; echo started")
    run = d.json("loop", "run", "escape")
    pid = _read_pid(pid_file)
    finished = d.wait_run(run["id"])
    assert finished["status"] == "succeeded"
    wait_until(lambda: not alive(pid), timeout=10, what=f"escapee {pid} killed with its run")
    assert "killed 1 leftover process(es)" in d.cli("runs", "logs", str(run["id"])).stdout
    assert _run_cgroups(d) == []  # the run's cgroup is removed with it


def test_a_crashed_daemons_escapee_dies_at_the_next_start(make_daemon: MakeDaemon, tmp_path: Path) -> None:
    d = make_daemon()
    pid_file = tmp_path / "escapee.pid"
    # The subshell exits at once: the escapee is reparented away from the run's tree as well.
    d.cli("loop", "add", "crash", "--every", "1h", "--timeout", "10m",
          "--command", f"({_escapee(pid_file)} >/dev/null 2>&1 &); echo started; exec sleep 1000")  # fmt: skip
    run = d.json("loop", "run", "crash")
    pid = _read_pid(pid_file)
    d.kill9()
    assert alive(pid)

    d = make_daemon()
    after = d.json("runs", "show", str(run["id"]))
    assert after["status"] == "interrupted"
    wait_until(lambda: not alive(pid), timeout=10, what=f"escapee {pid} killed by recovery")
    assert _run_cgroups(d) == []
