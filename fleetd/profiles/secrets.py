"""Where API keys live: the OS keyring (service `fleetd`), or — only when the user opts in with
FLEETD_SECRET_STORE=file — a 0600 JSON file under FLEETD_HOME, which stays the store while it holds keys.
Never a silent plaintext fallback."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Protocol

from fleetd.errors import FleetdError

SERVICE = "fleetd"


class SecretStoreUnavailable(FleetdError):
    status = 409
    code = "secret_store_unavailable"


class SecretStore(Protocol):
    description: str

    def get(self, profile: str) -> str | None: ...
    def problem(self) -> str | None: ...
    def set(self, profile: str, secret: str) -> None: ...
    def delete(self, profile: str) -> None: ...


class KeyringStore:
    description = "OS keyring"

    def __init__(self, file_store_path: Path) -> None:
        self._hint = (
            f"on a headless host, opt in to a file store with FLEETD_SECRET_STORE=file in the daemon's "
            f"environment (keys then live in {file_store_path}, mode 0600)"
        )

    def _keyring(self):  # type: ignore[no-untyped-def]
        import keyring
        from keyring.backends import fail

        backend = keyring.get_keyring()
        if isinstance(backend, fail.Keyring):
            raise SecretStoreUnavailable(f"no usable OS keyring backend; {self._hint}")
        return keyring

    def _call(self, what: str, *args: str) -> str | None:
        import keyring.errors

        kr = self._keyring()
        try:
            return getattr(kr, what)(SERVICE, *args)  # type: ignore[no-any-return]
        except keyring.errors.PasswordDeleteError:
            return None
        except keyring.errors.KeyringError as e:
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise SecretStoreUnavailable(f"the OS keyring refused ({reason}); {self._hint}") from None

    def problem(self) -> str | None:
        """Why keys cannot be kept here (for `fleetd doctor`), without reading one: a read may prompt to unlock."""
        import keyring
        from keyring.backends import fail

        if isinstance(keyring.get_keyring(), fail.Keyring):
            return "no usable OS keyring backend (a headless host, or no D-Bus session)"
        return None

    def get(self, profile: str) -> str | None:
        return self._call("get_password", profile)

    def set(self, profile: str, secret: str) -> None:
        self._call("set_password", profile, secret)

    def delete(self, profile: str) -> None:
        self._call("delete_password", profile)


class FileStore:
    """JSON {profile: secret}, 0600, replaced atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.description = f"file {path}"
        self._lock = threading.Lock()

    def _read(self) -> dict[str, str]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        return data if isinstance(data, dict) else {}

    def _write(self, data: dict[str, str]) -> None:
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
        os.replace(tmp, self.path)

    def problem(self) -> str | None:
        """Why this file should not hold keys as it is (for `fleetd doctor`), or None."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None  # made 0600 with the first key
        except OSError as e:
            return f"cannot read {self.path}: {e.strerror or e}"
        if st.st_uid != os.geteuid():
            return f"{self.path} belongs to uid {st.st_uid}, not to you"
        if st.st_mode & 0o077:
            return f"{self.path} can be read by others (mode {st.st_mode & 0o777:04o})"
        return None

    def holds_keys(self) -> bool:
        try:
            return bool(self._read())
        except (OSError, ValueError):  # unreadable or not JSON: the variable decides, and doctor says why
            return False

    def get(self, profile: str) -> str | None:
        with self._lock:
            return self._read().get(profile)

    def set(self, profile: str, secret: str) -> None:
        with self._lock:
            data = self._read()
            data[profile] = secret
            self._write(data)

    def delete(self, profile: str) -> None:
        with self._lock:
            data = self._read()
            if data.pop(profile, None) is not None:
                self._write(data)


def open_secret_store(home: Path, env: dict[str, str] | None = None) -> SecretStore:
    """The store FLEETD_SECRET_STORE names; without it, the file once it holds keys (the user opted in to it
    before: a daemon restarted from a shell without the variable must not lose its keys), else the keyring."""
    env = dict(os.environ) if env is None else env
    file_path = home / "secrets.json"
    choice = env.get("FLEETD_SECRET_STORE") or ("file" if FileStore(file_path).holds_keys() else "keyring")
    if choice == "file":
        return FileStore(file_path)
    if choice != "keyring":
        raise ValueError(f"FLEETD_SECRET_STORE must be 'keyring' or 'file', not {choice!r}")
    return KeyringStore(file_path)
