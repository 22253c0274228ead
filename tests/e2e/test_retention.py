"""Retention through the real daemon and CLI: `runs prune` by hand, the daemon's own pruning by --retain,
bad input refused with nothing deleted."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fleetd.store.db import Database
from fleetd.timefmt import to_iso
from tests.harness import Daemon, wait_until


def seed(home: Path, ages_days: list[float], loop: str = "gone") -> list[int]:
    """Finished runs of `loop` (not a defined loop) started that many days ago, each with a 1000-byte log,
    written into the home's database before the daemon starts; and one event and one gateway call per run, as old."""
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    db_path = home / "fleetd.db"

    async def create() -> None:
        await (await Database.open(db_path)).close()

    asyncio.run(create())
    now = datetime.now(UTC)
    ids = []
    with sqlite3.connect(db_path, isolation_level=None) as conn:
        for age in ages_days:
            at = to_iso(now - timedelta(days=age))
            (run_id,) = conn.execute(
                "INSERT INTO runs (loop, trigger, status, scheduled_at, started_at, finished_at, exit_code, backend) "
                "VALUES (?, 'schedule', 'succeeded', ?, ?, ?, 0, 'command') RETURNING id",
                (loop, at, at, at),
            ).fetchone()
            log = home / "logs" / "runs" / f"{run_id // 1000:04d}" / f"{run_id}.log"
            log.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            log.write_bytes(b"x" * 1000)
            conn.execute("UPDATE runs SET log_path = ? WHERE id = ?", (str(log), run_id))
            conn.execute("INSERT INTO events (at, type, message) VALUES (?, 'profile.exhausted', 'seeded')", (at,))
            conn.execute(
                "INSERT INTO gateway_calls (at, route, api, streamed, outcome, path_json, latency_ms, request_body) "
                "VALUES (?, 'r', 'chat', 0, 'succeeded', '[]', 1, 'a logged body')",
                (at,),
            )
            ids.append(run_id)
    return ids


def run_ids(daemon: Daemon) -> set[int]:
    return {r["id"] for r in daemon.runs()}


def test_the_daemon_prunes_history_older_than_retain_by_itself(short_home: Path) -> None:
    home = short_home / "home"
    old = seed(home, [200, 100, 40])
    young = seed(home, [20, 1])
    daemon = Daemon(home, "--retain", "30d", "--prune-interval", "0.2")
    try:
        daemon.start()
        wait_until(lambda: run_ids(daemon) == set(young), timeout=20, what="the old runs to be pruned")
        logs = home / "logs" / "runs" / "0000"
        assert not any((logs / f"{i}.log").exists() for i in old)
        assert all((logs / f"{i}.log").exists() for i in young)
        events = daemon.cli("events", "--limit", "100", "--json").stdout.splitlines()
        assert len(events) == 2  # one per young run
        assert len(daemon.json("gateway", "calls")) == 2
    finally:
        daemon.stop()


def test_retain_off_keeps_everything(short_home: Path) -> None:
    home = short_home / "home"
    ids = seed(home, [400, 200])
    daemon = Daemon(home, "--retain", "off", "--prune-interval", "0.1")
    try:
        daemon.start()
        # At this interval a pruning daemon would have pruned them within the first second (the test above).
        deadline = datetime.now(UTC) + timedelta(seconds=1.5)
        while datetime.now(UTC) < deadline:
            assert run_ids(daemon) == set(ids)
        refused = daemon.cli("runs", "prune", check=False)
        assert refused.returncode == 2 and "nothing to prune by" in refused.stderr
    finally:
        daemon.stop()


def test_runs_prune_by_hand_says_what_it_freed(short_home: Path) -> None:
    home = short_home / "home"
    seed(home, [50, 45, 5], loop="a")
    b = seed(home, [3, 2, 1], loop="b")
    daemon = Daemon(home, "--retain", "off")
    try:
        daemon.start()
        freed = daemon.json("runs", "prune", "--older-than", "30d")
        assert freed == {
            "runs": 2, "attempts": 0, "events": 2, "gateway_calls": 2, "log_files": 2, "log_bytes": 2000,
            "older_than_s": 30 * 86400.0, "keep_per_loop": None,
        }  # fmt: skip
        text = daemon.cli("runs", "prune", "--keep-per-loop", "1").stdout.strip()
        assert text == "pruned 2 run(s), 0 attempt(s), 0 event(s), 0 gateway call(s), 2 log file(s) (2.0 KB)"
        assert {r["loop"] for r in daemon.runs()} == {"a", "b"} and b[-1] in run_ids(daemon)
        # A pruned run's id says so (it said "no run with id", as if the id were mistyped); an id never given does not.
        for command in (["runs", "show"], ["runs", "logs"]):
            gone = daemon.cli(*command, str(b[0]), check=False)
            pruned = f"fleetd: run {b[0]} was pruned from the history (`fleetd runs prune`, the daemon's --retain)"
            assert (gone.returncode, gone.stderr.strip()) == (1, pruned)
            never = daemon.cli(*command, "999999", check=False)
            assert (never.returncode, never.stderr.strip()) == (1, "fleetd: no run with id 999999")
    finally:
        daemon.stop()


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--older-than", "abc"], "invalid --older-than"),
        (["--older-than", "0"], "must be positive"),
        (["--keep-per-loop", "0"], "--keep-per-loop"),
        (["--keep-per-loop", "many"], "--keep-per-loop"),
    ],
)
def test_bad_prune_input_is_exit_2_and_deletes_nothing(short_home: Path, args: list[str], fragment: str) -> None:
    home = short_home / "home"
    ids = seed(home, [400, 200])
    daemon = Daemon(home, "--retain", "off")
    try:
        daemon.start()
        result = daemon.cli("runs", "prune", *args, check=False)
        assert result.returncode == 2, result
        assert fragment in result.stderr and "Traceback" not in result.stderr
        assert run_ids(daemon) == set(ids)
    finally:
        daemon.stop()


def test_the_api_refuses_bad_prune_bodies_with_400(short_home: Path) -> None:
    import socket

    home = short_home / "home"
    ids = seed(home, [400])
    daemon = Daemon(home, "--retain", "off")
    try:
        daemon.start()
        for body in ({"older_than": 30}, {"older_than": "soon"}, {"keep_per_loop": True}, {"keep_per_loop": 0},
                     {"keep_per_loop": "3"}, {"everything": True}):  # fmt: skip
            payload = json.dumps(body).encode()
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.connect(str(daemon.socket))
                sock.sendall(
                    b"POST /v1/runs/prune HTTP/1.1\r\nHost: fleetd\r\nConnection: close\r\n"
                    + f"Content-Length: {len(payload)}\r\n\r\n".encode()
                    + payload
                )
                answer = b""
                while data := sock.recv(65536):
                    answer += data
            assert answer.startswith(b"HTTP/1.1 400"), (body, answer[:200])
        assert run_ids(daemon) == set(ids)
    finally:
        daemon.stop()


def test_a_bad_retain_is_exit_2(short_home: Path) -> None:
    result = Daemon(short_home / "home", "--retain", "forever").cli("daemon", "run", "--retain", "forever", check=False)
    assert result.returncode == 2 and "invalid --retain" in result.stderr
