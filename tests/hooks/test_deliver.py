"""One delivery: webhooks against a real local HTTP receiver (signature, retries, timeout, what is not
retried), exec hooks as real processes (stdin, environment, exit code, a timeout that kills the session)."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import httpx
import psutil
import pytest

from fleetd.hooks.deliver import RETRIES, post_webhook, retry_delay, run_exec
from fleetd.records.hook import Hook
from tests.harness import wait_until
from tests.hooks.receiver import receiver

SECRET = "s3cret-for-the-hmac-0123456789"
EVENT = {"id": 7, "at": "2026-01-01T00:00:00+00:00", "type": "run.failed", "backend": "command", "profile": None,
         "message": "run 3 of loop nightly failed, exit 3", "data": {"run_id": 3, "loop": "nightly"}}  # fmt: skip


@pytest.mark.parametrize(
    ("tries", "status", "retry_after", "delay"),
    [
        (1, None, None, 1.0),  # a network error or timeout: retried
        (2, 500, None, 2.0),
        (3, 503, None, 4.0),
        (4, 500, None, None),  # 3 retries, then stop
        (1, 429, "30", 30.0),  # Retry-After honoured
        (1, 429, "3600", 60.0),  # up to a minute
        (1, 429, "soon", 1.0),  # unreadable: the backoff
        (1, 404, None, None),  # the request itself is wrong
        (1, 302, None, None),  # redirects are not followed
    ],
)
def test_retry_delay(tries: int, status: int | None, retry_after: str | None, delay: float | None) -> None:
    assert retry_delay(tries, status, retry_after, base=1.0) == delay


def _webhook(url: str, timeout: float = 5.0) -> Hook:
    return Hook("w", ("run.failed",), "webhook", url, timeout_s=timeout, has_secret=True)


async def _post(hook: Hook, secret: str | None = SECRET, **kw: object):  # type: ignore[no-untyped-def]
    async with httpx.AsyncClient(follow_redirects=False) as client:
        return await post_webhook(client, hook, EVENT, secret, backoff_base=0.01, **kw)  # type: ignore[arg-type]


def test_a_webhook_gets_the_event_as_a_signed_json_post() -> None:
    with receiver() as rx:
        delivery = asyncio.run(_post(_webhook(rx.url)))
        assert delivery.ok and delivery.status_code == 200 and delivery.tries == 1
        [request] = rx.requests
    assert request.path == "/fleetd"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["x-fleetd-event"] == "run.failed" and request.headers["x-fleetd-event-id"] == "7"
    assert json.loads(request.body) == EVENT
    assert rx.signed_correctly(request, SECRET)
    assert not rx.signed_correctly(request, SECRET + "x")


def test_without_a_secret_there_is_no_signature() -> None:
    with receiver() as rx:
        assert asyncio.run(_post(_webhook(rx.url), secret=None)).ok
        assert "x-fleetd-signature" not in rx.requests[0].headers


def test_500_twice_then_200_is_delivered_on_the_third_try_each_signed() -> None:
    with receiver() as rx:
        rx.statuses = [500, 500]
        delivery = asyncio.run(_post(_webhook(rx.url)))
        assert delivery.ok and delivery.tries == 3 and delivery.detail == "HTTP 200"
        assert len(rx.requests) == 3 and all(rx.signed_correctly(r, SECRET) for r in rx.requests)


def test_a_server_that_keeps_failing_gets_three_retries_then_the_delivery_fails() -> None:
    with receiver() as rx:
        rx.statuses = [503] * 10
        delivery = asyncio.run(_post(_webhook(rx.url)))
        assert not delivery.ok and delivery.tries == 1 + RETRIES and delivery.detail == "HTTP 503"
        assert len(rx.requests) == 1 + RETRIES


@pytest.mark.parametrize("status", [400, 404, 302])
def test_4xx_and_redirects_are_not_retried(status: int) -> None:
    with receiver() as rx:
        rx.statuses = [status]
        delivery = asyncio.run(_post(_webhook(rx.url)))
        assert not delivery.ok and delivery.tries == 1 and delivery.status_code == status
        assert len(rx.requests) == 1


def test_a_webhook_that_does_not_answer_times_out_each_try() -> None:
    with receiver() as rx:
        rx.hang.set()
        delivery = asyncio.run(_post(_webhook(rx.url, timeout=0.2)))
        assert not delivery.ok and delivery.tries == 1 + RETRIES
        assert delivery.detail == "no answer within 0.2s"
        assert delivery.duration_ms < 5000


def test_a_refused_connection_is_a_failed_delivery_not_an_exception() -> None:
    with receiver() as rx:
        url = rx.url
    delivery = asyncio.run(_post(_webhook(url), retries=False))
    assert not delivery.ok and delivery.detail.startswith("cannot reach the webhook")


def _exec(command: str, timeout: float = 5.0) -> Hook:
    return Hook("x", ("run.*",), "exec", command, timeout_s=timeout)


def test_an_exec_hook_gets_the_event_on_stdin_and_in_its_environment(tmp_path: Path) -> None:
    out = tmp_path / "event.json"
    command = f'cat > {out}; echo "$FLEETD_EVENT_TYPE $FLEETD_EVENT_ID $FLEETD_LOOP $FLEETD_RUN_ID $PWD" > {out}.env'
    delivery = asyncio.run(run_exec(_exec(command), EVENT, cwd=tmp_path))
    assert delivery.ok and delivery.exit_code == 0
    assert json.loads(out.read_text()) == EVENT
    assert Path(f"{out}.env").read_text().split() == ["run.failed", "7", "nightly", "3", str(tmp_path)]


def test_an_exec_hook_that_fails_reports_its_exit_code_and_last_line_scrubbed(tmp_path: Path) -> None:
    hook = _exec(f"echo 'working'; echo 'token {SECRET} refused' >&2; exit 3")
    delivery = asyncio.run(run_exec(hook, EVENT, cwd=tmp_path, scrub=lambda s: s.replace(SECRET, "[REDACTED]")))
    assert not delivery.ok and delivery.exit_code == 3
    assert delivery.detail == "exit 3: token [REDACTED] refused"


def test_an_exec_hook_past_its_timeout_is_killed_with_its_whole_session(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    # The timeout leaves the shell time to record its child's pid on a loaded host.
    hook = _exec(f"sleep 60 & echo $! > {pids}; sleep 60", timeout=2.0)
    delivery = asyncio.run(run_exec(hook, EVENT, cwd=tmp_path))
    assert not delivery.ok and delivery.detail == "killed after its 2s timeout"
    child = int(pids.read_text())
    wait_until(lambda: not _alive(child), timeout=5, what="the hook's background child to die")


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_an_exec_hook_that_ignores_stdin_is_fine(tmp_path: Path) -> None:
    delivery = asyncio.run(run_exec(_exec("exit 0"), {**EVENT, "message": "x" * 200_000}, cwd=tmp_path))
    assert delivery.ok, delivery
    assert os.path.isdir(tmp_path)
