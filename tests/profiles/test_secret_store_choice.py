"""Which store holds the keys: the OS keyring unless FLEETD_SECRET_STORE=file, and the file once it holds
keys, so a daemon restarted from a shell without the variable still has them."""

from __future__ import annotations

import json
import os
from pathlib import Path

from fleetd.profiles.secrets import FileStore, KeyringStore, open_secret_store


def _file_with_keys(home: Path) -> None:
    fd = os.open(home / "secrets.json", os.O_WRONLY | os.O_CREAT, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"p1": "sk-kept-in-the-file"}, f)


def test_the_keyring_by_default_and_the_file_when_asked(tmp_path: Path) -> None:
    assert isinstance(open_secret_store(tmp_path, {}), KeyringStore)
    assert isinstance(open_secret_store(tmp_path, {"FLEETD_SECRET_STORE": "file"}), FileStore)


def test_a_file_that_holds_keys_stays_the_store_without_the_variable(tmp_path: Path) -> None:
    # Restarted without FLEETD_SECRET_STORE=file, the daemon looked in the keyring: no key to pass, none to
    # scrub from output (a key printed by a run appeared in clear), no webhook secret to sign with.
    _file_with_keys(tmp_path)
    store = open_secret_store(tmp_path, {})
    assert isinstance(store, FileStore) and store.get("p1") == "sk-kept-in-the-file"


def test_an_explicit_keyring_choice_wins_and_an_empty_file_chooses_nothing(tmp_path: Path) -> None:
    _file_with_keys(tmp_path)
    assert isinstance(open_secret_store(tmp_path, {"FLEETD_SECRET_STORE": "keyring"}), KeyringStore)
    (tmp_path / "secrets.json").write_text("{}")
    assert isinstance(open_secret_store(tmp_path, {}), KeyringStore)
