"""Where a run's cgroup goes, and when there is none (then the tag sweep is used): pure, on strings."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from fleetd.loops import cgroups
from tests.harness import wait_until

HYBRID = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
PURE_V2 = "29 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"
V1_ONLY = "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
SERVICE = "/user.slice/user-1000.slice/user@1000.service/app.slice/fleetd.service"


@pytest.mark.parametrize(
    ("mountinfo", "mount"),
    [(HYBRID, Path("/sys/fs/cgroup/unified")), (PURE_V2, Path("/sys/fs/cgroup")), (V1_ONLY, None), ("", None)],
)
def test_the_v2_mount_is_found_on_hybrid_and_pure_layouts(mountinfo: str, mount: Path | None) -> None:
    assert cgroups.v2_mount(mountinfo) == mount


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ("9:name=systemd:/\n4:memory:/x\n0::/\n", "/"),
        (f"0::{SERVICE}\n", SERVICE),
        ("4:memory:/x\n", None),  # v1 only: no unified line
    ],
)
def test_own_cgroup_is_the_unified_line(text: str, path: str | None) -> None:
    assert cgroups.own_path(text) == path


def test_a_delegated_own_cgroup_comes_first_then_the_hierarchy_root() -> None:
    mount = Path("/sys/fs/cgroup")
    assert cgroups.candidates(mount, SERVICE, delegated=True) == [mount / SERVICE.lstrip("/"), mount]
    # Not delegated (systemd without Delegate=yes): never make cgroups inside the unit's.
    assert cgroups.candidates(mount, SERVICE, delegated=False) == [mount]
    assert cgroups.candidates(mount, "/", delegated=True) == [mount]


def test_the_first_usable_candidate_wins_and_none_means_the_tag_sweep() -> None:
    mount = Path("/sys/fs/cgroup")
    own = mount / SERVICE.lstrip("/")
    options = cgroups.candidates(mount, SERVICE, delegated=True)
    assert cgroups.choose(options, lambda p: True) == own
    assert cgroups.choose(options, lambda p: p == mount) == mount  # delegated but unusable: the root (as root)
    assert cgroups.choose(options, lambda p: False) is None  # an unprivileged user without delegation


def test_fleetd_cgroup_off_turns_it_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETD_CGROUP", "off")
    assert cgroups._discover() is None


def test_a_run_cgroup_lives_in_the_instances_subtree() -> None:
    base = Path("/sys/fs/cgroup/unified")
    assert cgroups.subtree_of(base, "abc123") == base / "fleetd-abc123"


def test_the_child_joins_its_cgroup_before_the_command_runs() -> None:
    argv = cgroups.join_argv(Path("/cg/run-1"), ["claude", "-p", "a b"])
    assert argv[:2] == ["/bin/sh", "-c"]
    assert argv[3:] == ["fleetd-run", "/cg/run-1/cgroup.procs", "claude", "-p", "a b"]
    assert argv[2].rstrip().endswith('exec "$@"')  # same pid, session and create time as the command


def test_a_shell_script_joins_at_its_own_top_in_one_shell(tmp_path: Path) -> None:
    """The command backend's `/bin/sh -c SCRIPT`: no second shell to exec; $0, the arguments, the exit
    status and `$?` at the script's start are the script's own, whether or not the join worked."""
    argv = cgroups.join_argv(tmp_path / "no-such-cgroup", ["/bin/sh", "-c", 'echo "$?" "$0" "$1"; exit 3', "nm", "a b"])
    assert argv[:2] == ["/bin/sh", "-c"] and argv[3:] == ["nm", "a b"]
    assert argv[2].startswith("{ echo 0 >") and argv[2].endswith('\necho "$?" "$0" "$1"; exit 3')
    done = subprocess.run(argv, capture_output=True, check=False)
    assert (done.returncode, done.stdout, done.stderr) == (3, b"0 nm a b\n", b"")
    procs = tmp_path / "cg" / "cgroup.procs"  # a stand-in file: the pid the shell writes goes there
    procs.parent.mkdir()
    done = subprocess.run(
        cgroups.join_argv(procs.parent, ["/bin/sh", "-c", "echo $$"]), capture_output=True, check=False
    )
    assert procs.read_text() == "0\n" and done.stdout.strip().isdigit()  # `echo 0`: "this process"


def test_a_missing_command_is_reported_as_before_although_a_wrapper_execs_it(tmp_path: Path) -> None:
    from fleetd.loops.executor import _cannot_exec

    env = {"PATH": "/usr/bin:/bin"}
    assert _cannot_exec("sh", env, None) is None
    assert _cannot_exec("no-such-agent-cli", env, None) == ""  # "not found on PATH"
    assert _cannot_exec("sh", {"PATH": str(tmp_path)}, None) == ""  # the child's PATH, not the daemon's
    script = tmp_path / "tool"
    script.write_text("#!/bin/sh\n")
    assert _cannot_exec("./tool", env, str(tmp_path)) == "Permission denied"
    script.chmod(0o755)
    assert _cannot_exec("./tool", env, str(tmp_path)) is None  # relative to the child's cwd
    assert _cannot_exec("./tool", env, "/") == ""


@pytest.mark.skipif(cgroups.base_dir() is None, reason="no usable cgroup v2 subtree here")
def test_removing_a_cgroup_a_process_is_left_in_refuses_and_changes_nothing() -> None:
    """The executor asks `remove` first after a child's exit: only an empty cgroup may go."""
    cgroup = cgroups.run_path(f"test-remove-{os.getpid()}", 1)
    assert cgroup is not None and cgroups.create(cgroup)
    left = subprocess.Popen(cgroups.join_argv(cgroup, ["/bin/sh", "-c", "exec sleep 30"]))
    try:
        wait_until(lambda: cgroups.procs(cgroup) == [left.pid], what="the child in its cgroup")
        assert not cgroups.remove(cgroup)
        assert cgroups.exists(cgroup) and cgroups.procs(cgroup) == [left.pid]
    finally:
        left.kill()
        left.wait()
    wait_until(lambda: not cgroups.populated(cgroup), what="the cgroup empty")
    assert cgroups.remove(cgroup) and not cgroups.exists(cgroup) and not cgroup.parent.exists()
