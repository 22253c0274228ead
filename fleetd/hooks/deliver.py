"""One delivery of one event to one hook: an exec hook's command gets the event JSON on stdin, a
webhook gets it as a POST. Retrying is decided by `retry_delay`, a pure function of the try's outcome.

Invariants: a delivery never outlives its hook's timeout per try (an exec hook's whole session is
killed at the timeout; a webhook try is cancelled), and nothing here raises for a failing hook: every
outcome is a `Delivery`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import signal
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fleetd import __version__
from fleetd.records.hook import Delivery, Hook

if TYPE_CHECKING:
    import httpx

RETRIES = 3  # after the first try: a webhook is tried at most 4 times
MAX_RETRY_AFTER = 60.0  # a server's Retry-After is honoured up to this
OUTPUT_TAIL = 2048  # of an exec hook's output, for the failure message
KILL_GRACE = 1.0  # SIGTERM to SIGKILL of a timed-out exec hook's session
SIGNATURE_HEADER = "X-Fleetd-Signature"
TIMESTAMP_HEADER = "X-Fleetd-Timestamp"


def payload(event: Mapping[str, Any]) -> bytes:
    """The event exactly as `fleetd events --json` prints it."""
    return json.dumps(event, separators=(",", ":")).encode()


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """`sha256=<hex>` of HMAC-SHA256 over `<timestamp>.<body>`: the timestamp is signed too, so a
    receiver that rejects old timestamps also rejects a replayed body."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def retry_delay(tries: int, status_code: int | None, retry_after: str | None, base: float) -> float | None:
    """Seconds before the next try, or None to stop. `tries` so far; `status_code` None for a network
    error or a timeout. Retried: those, 429 and 5xx (exponential backoff: base, 2*base, 4*base; a
    Retry-After in seconds is honoured up to a minute). Not retried: 2xx (done), 3xx (redirects are not
    followed) and other 4xx (the request itself is wrong)."""
    if tries > RETRIES:
        return None
    if status_code is not None and status_code != 429 and status_code < 500:
        return None
    delay = base * 2 ** (tries - 1)
    if retry_after is not None:
        with contextlib.suppress(ValueError):
            delay = max(delay, min(float(retry_after), MAX_RETRY_AFTER))
    return delay


async def post_webhook(
    client: httpx.AsyncClient,
    hook: Hook,
    event: Mapping[str, Any],
    secret: str | None,
    *,
    backoff_base: float = 1.0,
    retries: bool = True,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    wall_clock: Callable[[], float] = time.time,
) -> Delivery:
    import httpx  # webhooks only: a daemon without them never loads it

    body = payload(event)
    started = time.monotonic()
    tries = 0
    while True:
        tries += 1
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"fleetd/{__version__}",
            "X-Fleetd-Event": str(event.get("type")),
            "X-Fleetd-Event-Id": str(event.get("id")),
            "X-Fleetd-Hook": hook.name,
        }
        if secret is not None:
            timestamp = int(wall_clock())  # per try: a retry is signed afresh
            headers[TIMESTAMP_HEADER] = str(timestamp)
            headers[SIGNATURE_HEADER] = signature(secret, timestamp, body)
        status: int | None = None
        retry_after: str | None = None
        try:
            response = await asyncio.wait_for(client.post(hook.target, content=body, headers=headers), hook.timeout_s)
            status, retry_after = response.status_code, response.headers.get("retry-after")
            detail = f"HTTP {status}"
            if 200 <= status < 300:
                return Delivery(True, detail, tries, status_code=status, duration_ms=_ms(started))
            if 300 <= status < 400:
                detail += " (a redirect: fleetd does not follow redirects; give the final URL)"
        except TimeoutError:
            detail = f"no answer within {hook.timeout_s:g}s"
        except httpx.HTTPError as e:
            detail = _network_error(e)
        delay = retry_delay(tries, status, retry_after, backoff_base) if retries else None
        if delay is None:
            return Delivery(False, detail, tries, status_code=status, duration_ms=_ms(started))
        await sleep(delay)


def _network_error(e: httpx.HTTPError) -> str:
    reason = " ".join(str(e).split()) or type(e).__name__
    return f"cannot reach the webhook: {reason[:200]}"


def exec_env(hook: Hook, event: Mapping[str, Any], base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The daemon's environment, plus what the event is about."""
    env = dict(os.environ if base is None else base)
    data = event.get("data") or {}
    extra = {
        "FLEETD_HOOK": hook.name,
        "FLEETD_EVENT_TYPE": event.get("type"),
        "FLEETD_EVENT_ID": event.get("id"),
        "FLEETD_EVENT_AT": event.get("at"),
        "FLEETD_LOOP": data.get("loop"),
        "FLEETD_RUN_ID": data.get("run_id"),
        "FLEETD_PROFILE": event.get("profile"),
        "FLEETD_BACKEND": event.get("backend"),
    }
    env.update({key: str(value) for key, value in extra.items() if value is not None})
    return env


async def run_exec(
    hook: Hook, event: Mapping[str, Any], *, cwd: Path, scrub: Callable[[str], str] = lambda s: s
) -> Delivery:
    """`/bin/sh -c COMMAND` in its own session, the event JSON on stdin; killed (the whole session) at
    the hook's timeout. Not retried: a command that ran halfway (a notification sent, then a failure)
    should not run again."""
    started = time.monotonic()
    try:
        proc = await asyncio.create_subprocess_exec(
            "/bin/sh", "-c", hook.target,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            cwd=cwd, env=exec_env(hook, event), start_new_session=True,
        )  # fmt: skip
    except OSError as e:
        return Delivery(False, f"cannot start /bin/sh: {e.strerror or e}", duration_ms=_ms(started))
    tail = bytearray()

    async def talk() -> int:
        assert proc.stdin is not None and proc.stdout is not None
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # a hook that ignores stdin
            proc.stdin.write(payload(event) + b"\n")
            await proc.stdin.drain()
        proc.stdin.close()
        while chunk := await proc.stdout.read(65536):  # read all, keep the end: memory stays bounded
            tail.extend(chunk)
            del tail[:-OUTPUT_TAIL]
        return await proc.wait()

    try:
        code = await asyncio.wait_for(talk(), hook.timeout_s)
    except TimeoutError:
        await _kill_session(proc)
        return Delivery(False, f"killed after its {hook.timeout_s:g}s timeout", duration_ms=_ms(started))
    except BaseException:  # cancelled (the daemon stops, the hook was removed): leave nothing running
        await asyncio.shield(_kill_session(proc))
        raise
    if code == 0:
        return Delivery(True, "exit 0", exit_code=0, duration_ms=_ms(started))
    last = tail.decode(errors="replace").strip().splitlines()
    said = f": {scrub(last[-1])[:300]}" if last else ""
    return Delivery(False, f"exit {code}{said}", exit_code=code, duration_ms=_ms(started))


async def _kill_session(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM the hook's session (its process group), then SIGKILL what is left after a grace."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            await asyncio.wait_for(proc.wait(), KILL_GRACE)
            if sig == signal.SIGTERM:
                # the leader is gone; its group may not be
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
            return
        except TimeoutError:
            continue


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)
