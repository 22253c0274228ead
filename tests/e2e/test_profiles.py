"""Profiles: secrets in the keyring (or the opt-in file store), never in the database; bad input."""

from __future__ import annotations

import json
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import Daemon

REPO = Path(__file__).resolve().parents[2]
KEY = "sk-live-0123456789abcdef"


@pytest.fixture
def keyring_daemon() -> Iterator[Daemon]:
    root = Path(tempfile.mkdtemp(prefix="flk-", dir="/tmp"))
    d = Daemon(root / "home")
    d.env.update(
        PYTHONPATH=str(REPO),
        PYTHON_KEYRING_BACKEND="tests.fixtures.json_keyring.JsonKeyring",
        TEST_KEYRING_FILE=str(root / "keyring.json"),
    )
    d.start()
    yield d
    d.stop()
    shutil.rmtree(root, ignore_errors=True)


def test_api_key_goes_to_the_keyring_only_and_rm_deletes_it(keyring_daemon: Daemon) -> None:
    d = keyring_daemon
    d.cli("profile", "add", "api", "--backend", "claude_code", "--api-key-stdin", input=KEY + "\n")
    keyring_file = Path(d.env["TEST_KEYRING_FILE"])
    assert json.loads(keyring_file.read_text()) == {"fleetd/api": KEY}
    shown = d.json("profile", "show", "api")
    assert shown["has_api_key"] is True and shown["tier"] == "metered" and KEY not in json.dumps(shown)
    assert KEY not in d.cli("profile", "list").stdout
    for path in d.home.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
    assert not (d.home / "secrets.json").exists()
    d.cli("profile", "rm", "api")
    assert json.loads(keyring_file.read_text()) == {}
    assert not Path(shown["config_dir"]).exists()


def test_headless_host_without_keyring_gets_a_clear_error_and_nothing_saved(short_home: Path) -> None:
    d = Daemon(short_home / "home")
    d.env["PYTHON_KEYRING_BACKEND"] = "keyring.backends.fail.Keyring"
    d.env.pop("FLEETD_SECRET_STORE", None)
    d.start()
    try:
        result = d.cli("profile", "add", "api", "--backend", "codex", "--api-key-stdin", check=False, input=KEY)
        assert result.returncode == 1
        (line,) = result.stderr.strip().splitlines()
        assert "no usable OS keyring backend" in line and "FLEETD_SECRET_STORE=file" in line
        assert d.json("profile", "list") == []
        assert not (d.home / "secrets.json").exists() and not (d.home / "profiles" / "api").exists()
        # A login profile needs no secret store at all.
        d.cli("profile", "add", "login", "--backend", "codex")
    finally:
        d.stop()


@pytest.fixture(scope="module")
def plain() -> Iterator[Daemon]:
    root = Path(tempfile.mkdtemp(prefix="flp-", dir="/tmp"))
    d = Daemon(root / "home")
    d.env["FLEETD_SECRET_STORE"] = "file"
    d.start()
    d.cli("profile", "add", "known", "--backend", "claude_code")
    yield d
    d.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize(
    ("args", "stdin", "code", "fragment"),
    [
        # The list named `command`, which is then refused: it takes no profiles.
        (
            ["add", "p1", "--backend", "teleport"],
            None,
            2,
            "unknown backend 'teleport' (backends with profiles: aider, claude_code, codex, gemini, openai_compat)",
        ),
        (["add", "p1", "--backend", "command"], None, 2, "the command backend takes no profiles"),
        (["add", "p1"], None, 2, "Missing option '--backend'"),
        (["add", "bad name", "--backend", "codex"], None, 2, "invalid profile name"),
        (["add", "p1", "--backend", "codex", "--api-key-stdin"], "\n", 2, "the API key on stdin is empty"),
        (["add", "p1", "--backend", "codex", "--api-key-stdin"], "a\nb\n", 2, "must be a single line"),
        (["add", "p1", "--backend", "openai_compat"], None, 2, "needs --base-url"),
        (["add", "p1", "--backend", "openai_compat", "--base-url", "ftp://x"], None, 2, "invalid --base-url"),
        (["add", "p1", "--backend", "codex", "--tier", "gold"], None, 2, "gold"),
        (["add", "p1", "--backend", "codex", "--price-input", "-1"], None, 2, "cannot be negative"),
        (["add", "known", "--backend", "claude_code"], None, 1, "profile 'known' already exists"),
        (["show", "ghost"], None, 1, "no profile named 'ghost'"),
        (["rm", "ghost"], None, 1, "no profile named 'ghost'"),
        (["env", "ghost"], None, 1, "no profile named 'ghost'"),
    ],
)
def test_bad_profile_input(plain: Daemon, args: list[str], stdin: str | None, code: int, fragment: str) -> None:
    before = plain.json("profile", "list")
    result = plain.cli("profile", *args, check=False, input=stdin)
    assert result.returncode == code, result
    (line,) = result.stderr.strip().splitlines()
    assert fragment in line
    assert plain.json("profile", "list") == before
    assert not (plain.home / "profiles" / "p1").exists()


def test_loop_pool_is_checked_when_the_loop_is_added(plain: Daemon) -> None:
    plain.cli("profile", "add", "cx", "--backend", "codex")
    for pool, fragment in (("ghost", "unknown profile 'ghost'"), ("cx", "is for backend codex, not claude_code"),
                           ("known,known", "lists a profile twice")):  # fmt: skip
        result = plain.cli("loop", "add", "l", "--every", "1h", "--backend", "claude_code", "--profile", pool,
                           "--prompt", "x", check=False)  # fmt: skip
        assert result.returncode == 2 and fragment in result.stderr
    result = plain.cli("loop", "add", "l", "--every", "1h", "--backend", "claude_code", check=False)
    assert result.returncode == 2 and "needs --prompt" in result.stderr
    assert plain.json("loop", "list") == []


def test_a_profile_in_a_loops_pool_cannot_be_removed(plain: Daemon) -> None:
    plain.cli("loop", "add", "uses", "--every", "1h", "--backend", "claude_code", "--profile", "known", "--prompt", "x")
    result = plain.cli("profile", "rm", "known", check=False)
    assert result.returncode == 1 and "still named by loop uses (pool)" in result.stderr
    plain.cli("loop", "rm", "uses")
    plain.cli("profile", "rm", "known")


def test_a_config_directory_is_one_profiles_and_rm_never_takes_anothers_login(plain: Daemon) -> None:
    # A trial gave a second profile the first's directory (accepted), then removed the first: the directory,
    # the second's login with it, was deleted.
    plain.cli("profile", "add", "cxa", "--backend", "codex")
    login = plain.home / "profiles" / "cxa" / "auth.json"
    login.write_text('{"tokens": "x"}')
    before = plain.json("profile", "list")
    for shared in (str(login.parent), f"{login.parent}/../cxa"):
        result = plain.cli("profile", "add", "cxb", "--backend", "claude_code", "--config-dir", shared, check=False)
        assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1, result
        assert "is profile cxa's: give each profile its own" in result.stderr
    assert plain.json("profile", "list") == before
    plain.cli("profile", "rm", "cxa")
    assert not login.parent.exists()  # its own, made by fleetd: removed with it


def test_no_secret_in_the_database_with_the_file_store(plain: Daemon) -> None:
    plain.cli("profile", "add", "keyed", "--backend", "gemini", "--api-key-stdin", input=KEY)
    with sqlite3.connect(plain.home / "fleetd.db") as db:
        dump = "\n".join(db.iterdump())
    assert KEY not in dump and "keyed" in dump
    assert json.loads((plain.home / "secrets.json").read_text()) == {"keyed": KEY}
    plain.cli("profile", "rm", "keyed")
    assert json.loads((plain.home / "secrets.json").read_text()) == {}
