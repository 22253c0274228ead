"""Which directories fleetd uses, creates or refuses: it never changes the mode of one it did not make."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from fleetd.paths import UnsafeDirectory, private_dir, resolve, unsafe_reason

ME, OTHER = 1000, 1001
DIR = stat.S_IFDIR


@pytest.mark.parametrize(
    ("mode", "owner", "unsafe"),
    [
        (DIR | 0o700, ME, None),
        (DIR | 0o755, ME, None),  # readable by others: the user's choice
        (DIR | 0o750, ME, None),
        (DIR | 0o775, ME, "other users can write to it (mode 0775)"),
        (DIR | 0o757, ME, "other users can write to it (mode 0757)"),
        (DIR | 0o1777, ME, "it is a shared directory (mode 1777)"),  # /tmp, even as its owner (root)
        (DIR | 0o700, OTHER, "it belongs to uid 1001, not to you (uid 1000)"),
        (stat.S_IFREG | 0o600, ME, "it is not a directory"),
    ],
)
def test_unsafe_reason(mode: int, owner: int, unsafe: str | None) -> None:
    reason = unsafe_reason(Path("/x"), mode, owner, ME)
    if unsafe is None:
        assert reason is None
    else:
        assert reason is not None and reason.startswith(unsafe)


def test_a_shared_directory_is_never_suggested_for_chmod() -> None:
    reason = unsafe_reason(Path("/tmp"), DIR | 0o1777, 0, 0)
    assert reason is not None and "chmod" not in reason and "/tmp/fleetd" in reason


def test_an_existing_home_open_to_others_is_refused_and_left_unchanged(tmp_path: Path) -> None:
    for mode in (0o1777, 0o777, 0o770):
        home = tmp_path / f"h{mode:o}"
        home.mkdir()
        os.chmod(home, mode)
        paths = resolve({"FLEETD_HOME": str(home)})
        with pytest.raises(UnsafeDirectory, match=f"refusing to use {home} as the fleetd home"):
            paths.ensure()
        assert stat.S_IMODE(home.stat().st_mode) == mode  # not chmod'ed to 0700
        assert list(home.iterdir()) == []  # and nothing made inside


def test_an_existing_private_enough_home_is_used_as_it_is(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    os.chmod(home, 0o755)
    resolve({"FLEETD_HOME": str(home)}).ensure()
    assert stat.S_IMODE(home.stat().st_mode) == 0o755
    for made in (home / "logs", home / "logs" / "runs", home / "run"):
        assert stat.S_IMODE(made.stat().st_mode) == 0o700  # what fleetd creates is private


def test_created_directories_are_0700_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        assert private_dir(tmp_path / "a" / "b", "x", parents=True) is True
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a" / "b").stat().st_mode) == 0o700


def test_without_parents_only_the_last_component_is_created(tmp_path: Path) -> None:
    with pytest.raises(UnsafeDirectory, match=r"its parent .* does not exist"):
        private_dir(tmp_path / "missing" / "deeper" / "dir", "the config directory", parents=False)
    assert not (tmp_path / "missing").exists()
    assert private_dir(tmp_path / "dir", "the config directory", parents=False) is True
    assert private_dir(tmp_path / "dir", "the config directory", parents=False) is False  # exists: used


def test_a_home_that_cannot_be_created_is_one_clear_error() -> None:
    with pytest.raises(UnsafeDirectory, match="cannot create the fleetd home /proc/nope"):
        resolve({"FLEETD_HOME": "/proc/nope"}).ensure()


@pytest.mark.parametrize("xdg", [None, "", "   ", "/tmp/xdg-data"])
def test_user_data_dir_is_what_platformdirs_says(xdg: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    """fleetd works the directory out itself (to keep platformdirs out of every CLI call): same answer."""
    import platformdirs

    from fleetd.paths import APP, user_data_dir

    if xdg is None:
        monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    else:
        monkeypatch.setenv("XDG_DATA_HOME", xdg)
    assert user_data_dir(dict(os.environ)) == Path(platformdirs.user_data_dir(APP))
