"""A hook: a command or a URL told about the events it subscribes to (fleetd/hooks/ delivers them)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

HookKind = Literal["exec", "webhook"]
DEFAULT_TIMEOUT_S = 10.0
MAX_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Hook:
    name: str
    on: tuple[str, ...]  # event types, `family.*` or `*` (records/event.py)
    kind: HookKind
    target: str  # the shell command (exec) or the URL (webhook)
    timeout_s: float = DEFAULT_TIMEOUT_S
    has_secret: bool = False  # the secret itself lives in the secret store, never in the database
    # Events up to this id were written before the hook existed: it is never sent those (a restart
    # that re-reads the log from the delivery cursor must not hand a new hook old news).
    since_event: int = 0
    created_at: datetime | None = None


@dataclass(frozen=True)
class Delivery:
    """What one delivery (all its tries) came to: `hook test` prints it, a failure becomes `hook.failed`."""

    ok: bool
    detail: str  # "HTTP 204", "exit 0", or what went wrong
    tries: int = 1
    status_code: int | None = None  # webhook
    exit_code: int | None = None  # exec
    duration_ms: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "detail": self.detail, "tries": self.tries, "status_code": self.status_code,
                "exit_code": self.exit_code, "duration_ms": self.duration_ms}  # fmt: skip
