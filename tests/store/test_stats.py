"""`fleetd stats` figures over a real SQLite file: rows written as the daemon writes them (a run and its
attempts start unfinished, then end), so the rollup triggers run as they do in production."""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from fleetd.errors import InvalidArgument
from fleetd.records.result import ParsedOutput, TokenUsage
from fleetd.store import rollups as rollups_module
from fleetd.store import stats as stats_module
from fleetd.store.attempts import AttemptStore, finish_write
from fleetd.store.db import Database
from fleetd.store.retention import RetentionStore
from fleetd.store.runs import RunStore
from fleetd.store.schema import STATS_REBUILD
from fleetd.store.stats import Stats, StatsStore, _PeriodHistograms, parse_by, percentile
from fleetd.timefmt import to_iso

NOW = datetime(2026, 11, 30, 15, 37, 12, 345000, tzinfo=UTC)
WEEK = NOW - timedelta(days=7)


@dataclass
class A:
    """An attempt: (backend, profile, chain step), how long it took, what it used."""

    backend: str
    profile: str
    step: int = 0
    ms: int = 1000
    model: str | None = "m"
    role: str = "work"
    tokens: tuple[int, int, int, int] = (0, 0, 0, 0)
    cost: float | None = None
    finished: bool = True


@dataclass
class R:
    loop: str
    status: str
    attempts: list[A] = field(default_factory=list)
    at: datetime = NOW - timedelta(hours=1)


def write(db_path: Path, runs: list[R]) -> None:
    """Each run as the daemon records it: inserted `running`, each attempt started then finished, then the
    run's final status."""
    with sqlite3.connect(db_path, isolation_level=None) as conn:
        for run in runs:
            final = run.status not in ("running", "waiting")
            status = "skipped" if run.status == "skipped" else "running"
            run_id = conn.execute(
                "INSERT INTO runs (loop, trigger, status, scheduled_at, started_at, backend) "
                "VALUES (?, 'schedule', ?, ?, ?, 'x') RETURNING id",
                (run.loop, status, to_iso(run.at), to_iso(run.at)),
            ).fetchone()[0]
            at = run.at
            for number, a in enumerate(run.attempts, start=1):
                attempt_id = conn.execute(
                    "INSERT INTO attempts (run_id, number, backend, profile, model, started_at, step, role) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                    (run_id, number, a.backend, a.profile, a.model, to_iso(at), a.step, a.role),
                ).fetchone()[0]
                if a.finished:
                    conn.execute(
                        "UPDATE attempts SET finished_at = ?, duration_ms = ?, input_tokens = ?, output_tokens = ?, "
                        "cache_read_tokens = ?, cache_write_tokens = ?, cost_usd = ? WHERE id = ?",
                        (to_iso(at + timedelta(milliseconds=a.ms)), a.ms, *a.tokens, a.cost, attempt_id),
                    )
                at += timedelta(milliseconds=a.ms)
            if final and status != "skipped":
                conn.execute(
                    "UPDATE runs SET status = ?, finished_at = ? WHERE id = ?", (run.status, to_iso(at), run_id)
                )


def query(db_path: Path, since: datetime, by: tuple[str, ...], loop: str | None = None) -> Stats:
    async def go() -> Stats:
        db = await Database.open(db_path)
        try:
            return await StatsStore(db).stats(since=since, by=by, loop=loop)
        finally:
            await db.close()

    return asyncio.run(go())


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    path = tmp_path / "f.db"
    asyncio.run(_create(path))
    return path


async def _create(path: Path) -> None:
    await (await Database.open(path)).close()


CC, CX = "claude_code", "codex"
SCENARIO = [
    # one candidate, success
    R("a", "succeeded", [A(CC, "cc-a", ms=10_000, tokens=(100, 10, 1000, 50), cost=0.10)]),
    # rate limited on cc-a, the next profile of the same step succeeds: a fallback, no escalation
    R(
        "a",
        "succeeded",
        [A(CC, "cc-a", ms=2_000, cost=0.01), A(CC, "cc-b", ms=20_000, tokens=(200, 20, 0, 0), cost=0.20)],
    ),
    # cc-a fails, the next chain step (codex) fails too: fallback and escalation; the run ends in codex
    R("a", "failed", [A(CC, "cc-a", ms=3_000), A(CX, "cx-a", step=1, ms=30_000, model="gpt", cost=0.30)]),
    # a transient retry on the same profile is the same candidate: no fallback
    R("b", "succeeded", [A(CC, "cc-a", ms=1_000), A(CC, "cc-a", ms=40_000, cost=0.40)]),
    # a reviewer's attempt after the work: the run ends in the work attempt's group
    R("b", "succeeded", [A(CC, "cc-a", ms=5_000, cost=0.05), A(CX, "cx-a", ms=7_000, role="review", model="gpt")]),
    # skipped: no attempts, counts nowhere
    R("b", "skipped"),
    # still running: its finished attempt counts, the run does not yet; its open attempt not at all
    R("b", "running", [A(CC, "cc-a", ms=6_000), A(CC, "cc-b", finished=False)]),
    # before the window
    R("a", "succeeded", [A(CC, "cc-a", ms=99_000, cost=9.0)], at=NOW - timedelta(days=8)),
]

# (runs_started, runs_ended, attempts, succeeded, fallbacks, escalations, p50 ms, p95 ms, cost)
EXPECTED_BY_BACKEND = {
    (CC,): (5, 4, 8, 4, 2, 1, 5_000, 40_000, 0.76),
    (CX,): (0, 1, 2, 0, 0, 0, 7_000, 30_000, 0.30),
}
EXPECTED_BY_ROLE = {
    ("review",): (0, 0, 1, 0, 0, 0, 7_000, 7_000, 0.0),
    ("work",): (5, 5, 9, 4, 2, 1, 6_000, 40_000, 1.06),
}
EXPECTED_BY_LOOP_STEP = {
    ("a", 0): (3, 2, 4, 2, 2, 1, 3_000, 20_000, 0.31),
    ("a", 1): (0, 1, 1, 0, 0, 0, 30_000, 30_000, 0.30),
    ("b", 0): (2, 2, 5, 2, 0, 0, 6_000, 40_000, 0.45),
}


def figures(stats: Stats) -> dict[tuple[Any, ...], tuple[Any, ...]]:
    return {
        tuple(row.group[k] for k in stats.by): (
            row.runs_started, row.runs_ended, row.attempts, row.succeeded, row.fallbacks, row.escalations,
            row.p50_duration_ms, row.p95_duration_ms, round(row.cost_usd, 6),
        )
        for row in stats.groups
    }  # fmt: skip


@pytest.mark.parametrize(
    ("by", "expected"),
    [(("backend",), EXPECTED_BY_BACKEND), (("role",), EXPECTED_BY_ROLE), (("loop", "step"), EXPECTED_BY_LOOP_STEP)],
)
def test_figures_per_group(
    db_path: Path, by: tuple[str, ...], expected: dict[tuple[Any, ...], tuple[Any, ...]]
) -> None:
    write(db_path, SCENARIO)
    stats = query(db_path, WEEK, by)
    assert figures(stats) == expected
    total = stats.total
    assert (total.runs_started, total.runs_ended, total.attempts, total.succeeded) == (5, 5, 10, 4)
    assert (total.fallbacks, total.escalations) == (2, 1)
    assert round(total.cost_usd, 6) == 1.06


def test_rates(db_path: Path) -> None:
    write(db_path, SCENARIO)
    stats = query(db_path, WEEK, ("backend",))
    cc, cx = stats.groups
    assert cc.success_rate == 1.0 and cc.fallback_rate == 0.4 and cc.escalation_rate == 0.2
    assert cc.cost_per_success == pytest.approx(0.76 / 4)
    # codex started no run: its start-side rates are undefined, not zero; its one ended run failed
    assert cx.fallback_rate is None and cx.escalation_rate is None
    assert cx.success_rate == 0.0 and cx.cost_per_success is None
    assert stats.total.success_rate == 0.8 and stats.total.fallback_rate == 0.4
    # durations of the 10 counted attempts: 1, 2, 3, 5, 6, 7, 10, 20, 30, 40 s
    assert (stats.total.p50_duration_ms, stats.total.p95_duration_ms) == (6_000, 40_000)


def test_model_and_profile_groups(db_path: Path) -> None:
    write(db_path, [R("a", "succeeded", [A(CC, "cc-a", model=None), A(CC, "cc-b", model="opus")])])
    assert figures(query(db_path, WEEK, ("model",))).keys() == {(None,), ("opus",)}
    assert figures(query(db_path, WEEK, ("profile",)))[("cc-b",)][:4] == (0, 1, 1, 1)


def test_loop_filter(db_path: Path) -> None:
    write(db_path, SCENARIO)
    stats = query(db_path, WEEK, ("backend",), loop="b")
    assert stats.total.runs_started == 2 and stats.total.attempts == 5
    assert query(db_path, WEEK, ("backend",), loop="nope").groups == []


def test_empty_window(db_path: Path) -> None:
    write(db_path, SCENARIO)
    stats = query(db_path, NOW - timedelta(minutes=5), ("backend",))
    assert stats.groups == []
    total = stats.total
    assert (total.runs_started, total.attempts, total.cost_usd) == (0, 0, 0)
    assert total.success_rate is None and total.p50_duration_ms is None and total.cost_per_success is None


def test_percentile_is_nearest_rank() -> None:
    assert percentile({}, 50) is None
    assert percentile({10: 1}, 95) == 10
    hist = {v: 1 for v in range(1, 101)}  # 1..100
    assert (percentile(hist, 50), percentile(hist, 95), percentile(hist, 100)) == (50, 95, 100)
    assert percentile({1: 1, 2: 1}, 50) == 1 and percentile({1: 1, 2: 1}, 51) == 2


def test_durations_are_rounded_to_two_significant_digits(db_path: Path) -> None:
    durations = [0, 7, 99, 100, 104, 105, 994, 995, 36_392, 1_234_567]
    write(db_path, [R("a", "succeeded", [A(CC, "cc-a", ms=ms) for ms in durations])])
    with sqlite3.connect(db_path) as conn:
        rounded = [r[0] for r in conn.execute("SELECT duration_ms FROM stats_attempt_facts ORDER BY attempt_id")]
    assert rounded == [0, 7, 99, 100, 100, 110, 990, 1000, 36_000, 1_200_000]


def test_by_is_validated() -> None:
    assert parse_by(None) == ("backend",)
    assert parse_by("loop, step") == ("loop", "step")
    refusals = [("nope", "unknown --by 'nope' (one of: backend, profile, model, loop, step, role"),
                ("loop,loop", "twice"), ("loop,step,role", "at most two"), ("", "unknown --by ''")]  # fmt: skip
    for bad, fragment in refusals:
        with pytest.raises(InvalidArgument) as e:
            parse_by(bad)
        assert fragment in e.value.message


# -- the rollups against the definition -----------------------------------------------------------


def _random_runs(rnd: random.Random, n: int) -> list[R]:
    candidates = [(CC, "cc-a", 0), (CC, "cc-b", 0), (CX, "cx-a", 1), ("gemini", "gm", 2)]
    runs = []
    for _ in range(n):
        at = NOW - timedelta(seconds=rnd.uniform(0, 3 * 86400))
        attempts = []
        for _ in range(rnd.choice((1, 1, 2, 3))):
            backend, profile, step = rnd.choice(candidates)
            attempts.append(A(backend, profile, step, ms=rnd.randint(0, 200_000), model=rnd.choice((None, "m1", "m2")),
                              role=rnd.choice(("work", "work", "work", "review")), cost=rnd.choice((None, 0.5)),
                              tokens=(rnd.randint(0, 9), 1, 2, 3)))  # fmt: skip
        runs.append(
            R(rnd.choice(("a", "b")), rnd.choice(("succeeded", "failed", "timed_out", "running")), attempts, at)
        )
    return runs


def _reference(runs: list[R], since: datetime, by: tuple[str, ...]) -> dict[tuple[Any, ...], tuple[Any, ...]]:
    """The documented definition, computed the plain way from the runs themselves."""
    groups: dict[tuple[Any, ...], list[Any]] = {}
    hists: dict[tuple[Any, ...], dict[int, int]] = {}

    def key(run: R, a: A) -> tuple[Any, ...]:
        values = {"backend": a.backend, "profile": a.profile, "model": a.model, "loop": run.loop, "step": a.step,
                  "role": a.role}  # fmt: skip
        return tuple(values[k] for k in by)

    def bump(k: tuple[Any, ...], index: int, amount: float = 1) -> None:
        groups.setdefault(k, [0, 0, 0, 0, 0, 0, 0.0])[index] += amount

    for run in runs:
        at = run.at
        for a in run.attempts:
            if a.finished and at >= since:
                bump(key(run, a), 2)
                bump(key(run, a), 6, a.cost or 0)
                digit = 10 ** (len(str(a.ms)) - 2)  # two significant digits, halves up
                rounded = a.ms if a.ms < 100 else (a.ms + digit // 2) // digit * digit
                hist = hists.setdefault(key(run, a), {})
                hist[rounded] = hist.get(rounded, 0) + 1
            at += timedelta(milliseconds=a.ms)
        if run.status == "running" or run.at < since or not run.attempts:
            continue
        work = [a for a in run.attempts if a.role == "work"]
        last = work[-1] if work else run.attempts[-1]
        first = run.attempts[0]
        bump(key(run, first), 0)
        bump(key(run, first), 4, len({(a.step, a.profile) for a in work}) > 1)
        bump(key(run, first), 5, len({a.step for a in work}) > 1)
        bump(key(run, last), 1)
        bump(key(run, last), 3, run.status == "succeeded")
    return {
        k: (v[0], v[1], v[2], v[3], v[4], v[5], percentile(hists.get(k, {}), 50), percentile(hists.get(k, {}), 95),
            round(v[6], 6))
        for k, v in groups.items()
    }  # fmt: skip


@pytest.mark.parametrize("seed", [1, 2])
def test_rollups_agree_with_the_definition_wherever_the_window_starts(db_path: Path, seed: int) -> None:
    """Whole days come from the daily rollup, whole hours of the first day from the hourly one, the first
    partial hour from raw rows: every cut must give the plain definition's figures."""
    rnd = random.Random(seed)
    runs = _random_runs(rnd, 300)
    write(db_path, runs)
    starts = [NOW - timedelta(days=4), NOW - timedelta(days=2), NOW - timedelta(days=1, hours=5, minutes=17),
              NOW.replace(hour=0, minute=0, second=0, microsecond=0), NOW - timedelta(minutes=41)]  # fmt: skip
    for since in starts:
        for by in [("backend",), ("model",), ("loop", "role"), ("profile", "step")]:
            assert figures(query(db_path, since, by)) == _reference(runs, since, by), (since, by)


def test_runs_pruned_by_count_still_count_wherever_the_window_starts(db_path: Path) -> None:
    """`runs prune --keep-per-loop` deletes recent runs: the first, partial hour of a window (all of `--since
    10m`) is read from the raw rows, and the pruned ones were missing from it (6 runs in 30 days, 1 in 10 min)."""
    rnd = random.Random(3)
    runs = _random_runs(rnd, 600)
    write(db_path, runs)

    async def prune_half() -> int:
        db = await Database.open(db_path)
        try:
            ids = [r[0] for r in await db.fetchall("SELECT id FROM runs ORDER BY id")]
            gone, _ = await RetentionStore(db).delete_runs(rnd.sample(ids, len(ids) // 2))
            return len(gone)
        finally:
            await db.close()

    assert asyncio.run(prune_half()) > 200
    # Each a minute past an hour: its raw part is 59 minutes long.
    starts = [NOW.replace(minute=1) - timedelta(hours=hours) for hours in (0, 1, 7, 20, 30)]
    for since in starts:
        for by in [("backend",), ("loop", "role"), ("profile", "step", "model")]:
            assert figures(query(db_path, since, by)) == _reference(runs, since, by), (since, by)


def test_a_store_that_answered_before_sees_every_later_change(db_path: Path) -> None:
    """A StatsStore keeps whole periods' histograms between queries: runs that end later, in periods it has
    kept (an attempt started days ago finishing now included), must count in its next answer, wherever the
    window starts."""
    rnd = random.Random(5)
    runs = _random_runs(rnd, 150)
    write(db_path, runs)
    starts = [NOW - timedelta(days=4), NOW - timedelta(days=1, hours=5, minutes=17), NOW - timedelta(minutes=41)]
    cuts = [("backend",), ("loop", "role")]

    async def go() -> None:
        db = await Database.open(db_path)
        store = StatsStore(db)
        try:
            for round_ in range(3):
                for since in starts:
                    for by in cuts:
                        stats = await store.stats(since=since, by=by)
                        assert figures(stats) == _reference(runs, since, by), (since, by)
                later = _random_runs(rnd, 40)
                for run in later:  # longer than any before: every percentile the cache could get wrong moves
                    for a in run.attempts:
                        a.ms = rnd.randint(300_000 * (round_ + 1), 400_000 * (round_ + 1))
                write(db_path, later)
                runs.extend(later)
        finally:
            await db.close()

    asyncio.run(go())


@dataclass
class Shape:
    """A run as the executor ends it: its attempts as (backend, profile, model at start, step, role, ms, what
    the output said), then its final status; `end` says how its last attempt ends (`with_run`: in the run's
    own write, as the executor does; `alone`: by itself first; `interrupted`: crash recovery; `open`: never)."""

    status: str
    attempts: list[tuple[str, str, str | None, int, str, int, ParsedOutput]]
    end: str = "with_run"
    waited: bool = False


def _out(outcome: str = "succeeded", model: str | None = None, cost: float | None = None, t: int = 0) -> ParsedOutput:
    return ParsedOutput(outcome, usage=TokenUsage(100 + t, 10 + t, 1000 * t, t), cost_usd=cost, model=model)  # type: ignore[arg-type]


SHAPES = [
    # one attempt
    Shape("succeeded", [(CC, "cc-a", "sonnet", 1, "work", 36_392, _out(cost=0.25, t=3))]),
    # rate limited on cc-a, the next profile of the same step succeeds: a fallback
    Shape("succeeded", [(CC, "cc-a", "sonnet", 1, "work", 1_250, _out("failed")),
                        (CC, "cc-b", "sonnet", 1, "work", 20_000, _out(cost=0.5, t=1))]),
    # escalation to a later step (another backend), which fails too
    Shape("failed", [(CC, "cc-a", None, 1, "work", 3_000, _out("failed")),
                     (CX, "cx-a", "gpt-5", 2, "work", 99_999, _out("failed", cost=0.3))]),
    # a transient retry on the same profile: the same candidate, no fallback
    Shape("succeeded", [(CC, "cc-a", None, 1, "work", 40, _out("failed")), (CC, "cc-a", None, 1, "work", 7, _out())]),
    # a reviewer's attempt after the work: the run ends in the work attempt's group
    Shape("succeeded", [(CC, "cc-a", "sonnet", 1, "work", 5_000, _out(cost=0.05)),
                        (CX, "cx-a", None, 1, "review", 7_000, _out(model="gpt-5"))]),
    # a reviewer after an escalation: started in one group, ended in another, reviewed in a third
    Shape("failed", [(CC, "cc-a", "sonnet", 1, "work", 104, _out("failed")),
                     (CX, "cx-a", "gpt-5", 2, "work", 995, _out(t=2)),
                     (CC, "cc-b", None, 1, "review", 1_234_567, _out())], end="alone"),
    # ended without any attempt (no usable candidate, over budget): under the loop's backend
    Shape("failed", []),
    Shape("timed_out", [(CX, "cx-a", None, 2, "work", 600_000, _out("failed", model="gpt-5"))]),
    # cancelled while its attempt ran, and cancelled while waiting for a reset
    Shape("cancelled", [(CC, "cc-a", "sonnet", 1, "work", 2_500, _out("failed"))]),
    Shape("cancelled", [(CC, "cc-a", "sonnet", 1, "work", 900, _out("failed"))], end="alone", waited=True),
    # a daemon that died mid-attempt: crash recovery closes the attempt, then the run
    Shape("interrupted", [(CC, "cc-b", None, 1, "work", 0, _out())], end="interrupted"),
    # waited for a reset, then ran again on the same profile and succeeded
    Shape("succeeded", [(CC, "cc-a", "sonnet", 1, "work", 1_000, _out("failed")),
                        (CC, "cc-a", "sonnet", 1, "work", 12_345, _out(cost=0.01))], waited=True),
    # still running: its ended attempt counts, the run and its open attempt not yet
    Shape("running", [(CC, "cc-a", None, 1, "work", 8_000, _out()), (CC, "cc-b", None, 1, "work", 1, _out())],
          end="open"),
]  # fmt: skip


async def _end_through_the_store(db_path: Path, shapes: list[Shape], at: datetime) -> None:
    """Each shape written by RunStore and AttemptStore, as the executor and crash recovery write them."""
    db = await Database.open(db_path)
    runs, attempts = RunStore(db), AttemptStore(db)
    try:
        await runs.insert(loop="a", trigger="schedule", status="skipped", scheduled_at=at, started_at=at,
                          finished_at=at, backend=CC, skip_reason="overlap")  # fmt: skip
        for i, shape in enumerate(shapes):
            # 40 minutes apart: runs (and some attempts) fall in other hours and days
            start = at + timedelta(minutes=40 * i, milliseconds=137 * i)
            run = await runs.insert(loop=f"l{i % 3}", trigger="schedule", status="running", scheduled_at=start,
                                    started_at=start, backend=CC)  # fmt: skip
            assert run is not None
            if shape.waited:
                await runs.set_waiting(run.id, start + timedelta(minutes=5))
                if shape.status != "cancelled":
                    await runs.set_waiting(run.id, None)
            now, last = start, None
            for number, (backend, profile, model, step, role, ms, parsed) in enumerate(shape.attempts, start=1):
                attempt_id = await attempts.start(run_id=run.id, number=number, backend=backend, profile=profile,
                                                  model=model, started_at=now, step=step, role=role)  # fmt: skip
                now += timedelta(milliseconds=ms)
                end = finish_write(attempt_id, finished_at=now, exit_code=0, parsed=parsed, error=None,
                                   cost_usd=parsed.cost_usd)  # fmt: skip
                if number < len(shape.attempts) or shape.end == "alone":
                    await db.write(end)
                else:
                    last = end
            if shape.end == "interrupted":
                await attempts.interrupt_open(run.id, finished_at=now, error="fleetd stopped")
                last = None
            if shape.status not in ("running", "waiting"):
                await runs.finish(run.id, status=shape.status, finished_at=now, exit_code=1,  # type: ignore[arg-type]
                                  attempt_end=last)  # fmt: skip
    finally:
        await db.close()


def test_rebuild_gives_what_the_triggers_kept(db_path: Path) -> None:
    """STATS_REBUILD (the migration's backfill, reading the views) and the triggers (reading the ended row) are
    two writers of one rollup: runs of every shape, ended through the real store, count alike in both."""
    write(db_path, _random_runs(random.Random(3), 200) + SCENARIO)
    asyncio.run(_end_through_the_store(db_path, SHAPES, NOW - timedelta(days=2, minutes=3)))
    asyncio.run(_end_through_the_store(db_path, SHAPES[::-1], NOW - timedelta(hours=7)))

    def snapshot() -> list[tuple[Any, ...]]:
        with sqlite3.connect(db_path) as conn:
            rows = []
            for table in ("stats_daily", "stats_hourly"):
                for r in conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2, 3, 4, 5, 6, 7"):
                    rows.append((table, *r[:12], round(r[12], 9), json.loads(r[13]), *r[14:]))
            return rows

    kept = snapshot()
    with sqlite3.connect(db_path) as conn:
        ended = conn.execute("SELECT count(*) FROM runs WHERE status NOT IN ('running', 'waiting', 'skipped')")
        assert (
            conn.execute("SELECT sum(runs_ended), sum(runs_started) FROM stats_daily").fetchone()
            == (ended.fetchone()[0],) * 2
        )
    with sqlite3.connect(db_path, isolation_level=None) as conn:
        conn.executescript(f"BEGIN; {STATS_REBUILD} COMMIT;")
    assert snapshot() == kept


def test_a_run_that_ended_without_an_attempt_counts_under_its_loops_backend(db_path: Path) -> None:
    """No usable candidate, over budget, an unreadable prompt: the run failed and had no attempt."""
    write(db_path, [R("a", "failed"), R("a", "succeeded", [A(CC, "cc-a")])])
    stats = query(db_path, WEEK, ("loop",))
    (row,) = stats.groups
    assert (row.runs_started, row.runs_ended, row.succeeded, row.attempts) == (2, 2, 1, 1)
    assert row.success_rate == 0.5
    by_backend = {tuple(r.group.values()): r for r in query(db_path, WEEK, ("backend",)).groups}
    assert by_backend[("x",)].runs_ended == 1 and by_backend[("x",)].succeeded == 0


def test_a_query_merges_and_ranks_the_histograms_off_the_event_loop(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store's first query decodes and merges whole periods' histograms (~400 ms a month at a million
    attempts), and every query merges the periods' and ranks them (as long again with `--by loop`): in another
    thread than the event loop's, which meanwhile goes on answering (here: runs a coroutine that the decoding
    thread hands it, and waits for)."""
    runs = _random_runs(random.Random(4), 120)
    write(db_path, runs)
    since = NOW - timedelta(days=4)
    on_the_loop: dict[str, list[bool]] = {"decoded": [], "ranked": []}

    async def go() -> list[Stats]:
        loop, loop_thread = asyncio.get_running_loop(), threading.get_ident()

        def loads(text: str) -> Any:
            here = threading.get_ident() == loop_thread
            if not here and not on_the_loop["decoded"]:  # on the loop's own thread, it would wait for itself
                asyncio.run_coroutine_threadsafe(asyncio.sleep(0), loop).result(timeout=30)
            on_the_loop["decoded"].append(here)
            return json.loads(text)

        def ranked(histogram: dict[int, int], p: float) -> int | None:
            on_the_loop["ranked"].append(threading.get_ident() == loop_thread)
            return percentile(histogram, p)

        monkeypatch.setattr(rollups_module, "json", SimpleNamespace(loads=loads, dumps=json.dumps))
        monkeypatch.setattr(stats_module, "percentile", ranked)
        db = await Database.open(db_path)
        try:
            store = StatsStore(db)
            return [await store.stats(since=since, by=("backend",)) for _ in range(2)]
        finally:
            await db.close()

    first, kept = asyncio.run(go())
    assert on_the_loop["decoded"] and not any(on_the_loop["decoded"])
    assert on_the_loop["ranked"] and not any(on_the_loop["ranked"])
    assert figures(first) == figures(kept) == _reference(runs, since, ("backend",))


def test_kept_histograms_stay_within_their_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_PeriodHistograms, "MAX_ENTRIES", 10)
    kept = _PeriodHistograms()

    def periods(*days: str, entries: int = 2) -> dict[Any, Any]:
        return {("d", day): (1, {("cc",): {str(i): 1 for i in range(entries)}}) for day in days}

    kept.put("a", periods("01", "02"))
    kept.put("a", periods("03"))
    assert set(kept.get("a")) == {("d", "01"), ("d", "02"), ("d", "03")}  # earlier periods stay while they fit
    kept.put("a", periods("04", "05", "06"))
    assert set(kept.get("a")) == {("d", "04"), ("d", "05"), ("d", "06")}  # past the bound: the last query's only
    kept.put("b", periods("01", "02", entries=3))
    assert kept.get("a") == {} and set(kept.get("b")) == {("d", "01"), ("d", "02")}  # the least recent goes
    kept.put("c", periods("01", entries=11))
    assert kept.get("c") == {}  # too big alone: not kept


def test_the_triggers_build_no_temporary_btree(db_path: Path) -> None:
    """A run's end and an attempt's end pay for their triggers on the writer thread: a sort, a GROUP BY or an IN
    list of constants in a trigger's statement opens a temporary b-tree with a page cache of its own per row
    ended, which cost more than all the rest of the trigger (schema.py, migration 18)."""
    ends = {
        "stats_run_finished": "UPDATE runs SET status = 'failed', finished_at = 'x' WHERE id = 1",
        "stats_attempt_finished": "UPDATE attempts SET finished_at = 'x', duration_ms = 5 WHERE id = 1",
    }
    with sqlite3.connect(db_path) as conn:
        for trigger, sql in ends.items():
            # EXPLAIN lists the trigger's program after the statement's own, from its Init naming the trigger
            ops = [(r[1], str(r[5])) for r in conn.execute(f"EXPLAIN {sql}")]
            start = next(i for i, (op, p4) in enumerate(ops) if op == "Init" and p4 == f"-- TRIGGER {trigger}")
            opened = [op for op, _ in ops[start:] if op in ("OpenEphemeral", "OpenAutoindex", "SorterOpen")]
            assert opened == [], (trigger, opened)
