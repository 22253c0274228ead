"""kill_tree on real processes: by the run's cgroup where there is one, else by session + tag."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetd.loops import cgroups, proctree
from tests.harness import alive, wait_until

FORKER = Path(__file__).resolve().parents[1] / "fixtures" / "forker.py"
needs_cgroup = pytest.mark.skipif(cgroups.base_dir() is None, reason="no writable cgroup v2 subtree here")


def _pids(path: Path, n: int) -> list[int]:
    wait_until(lambda: path.exists() and len(path.read_text().split()) == n, what=f"{n} pids in {path}")
    return [int(p) for p in path.read_text().split()]


def _escapee(pid_file: Path) -> str:
    return f"setsid env -i /bin/sh -c 'echo $$ > {pid_file}; exec sleep 1000' >/dev/null 2>&1 &"


@pytest.fixture
def run_cgroup() -> Iterator[Path]:
    cg = cgroups.run_path(f"test{uuid.uuid4().hex[:8]}", 1)
    assert cg is not None and cgroups.create(cg)
    yield cg
    cgroups.kill_all(cg, 5)
    cgroups.remove(cg)


def test_without_a_cgroup_the_tag_sweep_finds_a_double_forked_grandchild(tmp_path: Path) -> None:
    tag = f"test-{uuid.uuid4().hex}"
    pids_file = tmp_path / "pids"
    root = subprocess.Popen(
        [sys.executable, str(FORKER), str(pids_file)],
        env={**os.environ, proctree.TAG_VAR: tag},
        start_new_session=True,
        stdout=subprocess.DEVNULL,
    )
    pids = _pids(pids_file, 3)
    # A cgroup that does not exist (a run from before cgroups, or none could be made): the sweep stands in.
    killed = asyncio.run(proctree.kill_tree(root.pid, tag=tag, grace=0.3, cgroup=tmp_path / "no-such-cgroup"))
    root.wait(5)
    assert killed >= 3  # (plus the zombie the double fork leaves until the root is reaped)
    wait_until(lambda: not any(alive(p) for p in pids), what="every process of the tree gone")


@needs_cgroup
def test_with_a_cgroup_an_escapee_without_the_tag_is_killed(tmp_path: Path, run_cgroup: Path) -> None:
    pid_file = tmp_path / "escapee.pid"
    subprocess.run(cgroups.join_argv(run_cgroup, ["/bin/sh", "-c", _escapee(pid_file)]), check=True)
    pid = _pids(pid_file, 1)[0]
    assert alive(pid) and cgroups.procs(run_cgroup) == [pid]
    # No tag and no live root: the tag sweep would find nothing; the cgroup lists it.
    assert asyncio.run(proctree.kill_tree(None, tag=None, grace=0.3, cgroup=run_cgroup)) == 1
    wait_until(lambda: not alive(pid), what="the escapee killed")
    assert cgroups.procs(run_cgroup) == []
    assert cgroups.remove(run_cgroup) and not run_cgroup.exists() and not run_cgroup.parent.exists()


@needs_cgroup
def test_a_process_forking_in_the_grace_is_killed_with_what_it_forked(tmp_path: Path, run_cgroup: Path) -> None:
    # On SIGTERM the shell forks two children into sessions of their own: born after the snapshot and
    # outside the group that is signalled, so only the cgroup can find them. The shell records their
    # pids itself (`$!`) before the grace ends, whatever the scheduler does with the children.
    born = tmp_path / "born"
    script = (
        f"on_term() {{ setsid sleep 1000 & echo $! >> {born}; setsid sleep 1000 & echo $! >> {born}; }}; "
        "trap on_term TERM; echo ready; while :; do sleep 0.05; done"
    )
    proc = subprocess.Popen(
        cgroups.join_argv(run_cgroup, ["/bin/sh", "-c", script]), start_new_session=True, stdout=subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    killed = asyncio.run(proctree.kill_tree(proc.pid, tag=None, grace=1.0, cgroup=run_cgroup))
    proc.wait(5)
    # The shell is gone, so the file is complete. It may have taken SIGTERM twice (as a group member,
    # then by pid) and forked twice: two children or more.
    forked = {int(p) for p in born.read_text().split()}
    assert len(forked) >= 2
    assert not any(alive(p) for p in forked)
    assert killed >= 1 + len(forked)  # the shell and every child it forked in the grace
    assert cgroups.procs(run_cgroup) == []


@needs_cgroup
def test_recovery_reaps_the_run_cgroups_a_killed_daemon_left(tmp_path: Path) -> None:
    instance = f"test{uuid.uuid4().hex[:8]}"
    escapees = []
    for run_id in (3, 4):
        cg = cgroups.run_path(instance, run_id)
        assert cg is not None and cgroups.create(cg)
        pid_file = tmp_path / f"{run_id}.pid"
        subprocess.run(cgroups.join_argv(cg, ["/bin/sh", "-c", _escapee(pid_file)]), check=True)
        escapees.append(_pids(pid_file, 1)[0])
    assert [p.name for p in cgroups.leftovers(instance)] == ["run-3", "run-4"]
    assert asyncio.run(proctree.reap_cgroups(instance, grace=0.3)) == 2
    wait_until(lambda: not any(alive(p) for p in escapees), what="both escapees killed")
    assert cgroups.leftovers(instance) == [] and not cgroups.subtree(instance).exists()  # type: ignore[union-attr]
