"""Dispatch: runs of `true` started and recorded per second by fleetd's executor, vs a bare asyncio
loop spawning `sh -c true` (pipes, a new session) in the same run.

    .venv/bin/python bench/dispatch.py [--seconds 5] [--concurrency 32] [--repeat 3] [--dir /tmp]

Both keep `--concurrency` runs in flight for `--seconds`: the baseline spawns and waits; fleetd's side
is the daemon's own dispatch path (Executor.fire → the run row → the child in its session and cgroup,
its output to the run log → its end written), over a real SQLite store, one loop per slot (a loop
never overlaps itself), each run started as soon as the loop's previous one is recorded. The
scheduler's timers and fire lag are bench/fire_lag.py's. Both share this machine's cores with whatever
else runs: compare the ratio, and `--repeat` for a range. `FLEETD_CGROUP=off` measures the fallback
(session + tag sweep) instead of a cgroup per run. Each round also prints fleetd's CPU per run by thread
and the cores the machine left idle meanwhile (Linux): idle cores with a flat rate mean that something
other than the CPU bounds it. Each run makes one new file, its log, in the home (`--dir`): on an ext4 without a
journal, as on the VMs this was measured on, each new inode costs 40-470 us of the kernel's time, and more soon
after many deletions (`--dir /dev/shm` shows the rate without that). To measure another checkout, run that
checkout's copy of this script (`git worktree add /tmp/x main`, copy bench/ there).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import write_json  # noqa: E402
from fleetd.loops import cgroups  # noqa: E402
from fleetd.loops import executor as executor_module  # noqa: E402
from fleetd.loops.executor import Executor  # noqa: E402
from fleetd.records.loop import Loop, Schedule  # noqa: E402
from fleetd.store.attempts import AttemptStore  # noqa: E402
from fleetd.store.db import Database  # noqa: E402
from fleetd.store.loops import LoopStore  # noqa: E402
from fleetd.store.runs import RunStore  # noqa: E402
from fleetd.timefmt import now_utc  # noqa: E402


async def _bare(seconds: float, concurrency: int) -> int:
    done = 0
    end = time.monotonic() + seconds

    async def worker() -> None:
        nonlocal done
        while time.monotonic() < end:
            proc = await asyncio.create_subprocess_exec(
                "sh", "-c", "true", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, start_new_session=True,
            )  # fmt: skip
            await proc.communicate()
            done += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done


def _cpu() -> float:
    """This process's CPU seconds (every thread; not its children's)."""
    times = os.times()
    return times.user + times.system


def bare_rate(seconds: float, concurrency: int) -> tuple[float, float]:
    """Spawns a second, and the CPU milliseconds each cost this process."""
    start, cpu = time.monotonic(), _cpu()
    done = asyncio.run(_bare(seconds, concurrency))
    return done / (time.monotonic() - start), (_cpu() - cpu) * 1000 / max(done, 1)


def _thread_cpu() -> dict[str, float]:
    """CPU seconds of this process's live threads by kind (the event loop's, `fleetd-launch`, ...); {} without /proc."""
    kinds = {t.native_id: t.name for t in threading.enumerate()}
    tick = os.sysconf("SC_CLK_TCK")
    cpu: dict[str, float] = {}
    with contextlib.suppress(OSError):
        for tid in os.listdir("/proc/self/task"):
            try:
                stat = Path(f"/proc/self/task/{tid}/stat").read_text()
            except OSError:
                continue  # ended meanwhile
            fields = stat[stat.rindex(")") + 2 :].split()
            name = "event loop" if int(tid) == os.getpid() else kinds.get(int(tid), "other")
            kind = name[name.find("(") + 1 : -1] if "(" in name else name.rstrip("0123456789-")
            cpu[kind] = cpu.get(kind, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return cpu


def _idle_seconds() -> float:
    """The machine's idle CPU seconds so far, every core (0 without /proc)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return 0.0
    return (int(fields[4]) + int(fields[5])) / os.sysconf("SC_CLK_TCK")


def _fs_type(path: Path) -> str:
    """The filesystem `path` is on (Linux: the longest mount point above it), or "?"; each run makes a file there."""
    best, kind, where = "", "?", str(path.resolve()).rstrip("/") + "/"
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mounts").read_text().splitlines():
            point, fs = line.split()[1:3]
            if where.startswith(point.rstrip("/") + "/") and len(point) >= len(best):
                best, kind = point, fs
    return kind


class _NoProfiles:
    """The command backend needs no profile; its output is scrubbed of no key."""

    async def known_secrets(self) -> list[str]:
        return []


async def _fleetd(home: Path, seconds: float, concurrency: int) -> tuple[int, int, dict[str, float], float]:
    if hasattr(executor_module, "watch_children_by_pidfd"):  # as the daemon does (older checkouts lack it)
        executor_module.watch_children_by_pidfd()
    db = await Database.open(home / "fleetd.db")
    try:
        runs = RunStore(db)
        ex = Executor(
            runs, AttemptStore(db), _NoProfiles(), log_path=lambda i: home / "logs" / f"{i}.log",  # type: ignore[arg-type]
            tmp_root=home / "tmp", tag_prefix=f"bench{os.getpid()}", clock=now_utc, local_tz=ZoneInfo("UTC"),
            kill_grace=5.0,
        )  # fmt: skip
        now = now_utc()
        every = Schedule("every", "1h", "UTC")
        loops = [Loop(f"d{i:03d}", every, "command", command="true", created_at=now, updated_at=now)
                 for i in range(concurrency)]  # fmt: skip
        for loop in loops:
            await LoopStore(db).insert(loop)
        done = 0
        # Where the daemon's CPU goes, and whether the cores are the limit: read before the writer thread ends.
        threads, idle, start = _thread_cpu(), _idle_seconds(), time.monotonic()
        end = start + seconds

        async def worker(loop: Loop) -> None:
            nonlocal done
            while time.monotonic() < end:
                run = await ex.fire(loop, "manual", now_utc())
                assert run is not None and run.status == "running", run
                slot = ex.active[loop.instance]  # keyed by the loop's instance since loops/edit
                await slot.done.wait()  # its end is written (or kept for a retry) when the slot is done
                done += 1

        await asyncio.gather(*(worker(loop) for loop in loops))
        per_run = {k: (v - threads.get(k, 0.0)) * 1000 / max(done, 1) for k, v in _thread_cpu().items()}
        idle_cores = (_idle_seconds() - idle) / (time.monotonic() - start)
        assert await ex.wait_idle(30)
        failed = len(await runs.list(status="failed", limit=1_000_000))
        return done, failed, {k: v for k, v in per_run.items() if v >= 0.01}, idle_cores
    finally:
        await db.close()


def fleetd_rate(home: Path, seconds: float, concurrency: int) -> tuple[float, float, int, dict[str, float], float]:
    """Runs a second, the CPU milliseconds each cost this process (the daemon's side: its event loop, launch
    threads and store writer), how many failed, those milliseconds by thread kind, and how many cores stayed idle."""
    start, cpu = time.monotonic(), _cpu()
    done, failed, threads, idle_cores = asyncio.run(_fleetd(home, seconds, concurrency))
    return done / (time.monotonic() - start), (_cpu() - cpu) * 1000 / max(done, 1), failed, threads, idle_cores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measured window, each side")
    parser.add_argument("--concurrency", type=int, default=32, help="runs in flight (loops), each side")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, help="where to write the figures (default bench/results/dispatch.json)")
    where = "where the daemon's home goes (default /tmp): its run logs, TMPDIRs and database"
    parser.add_argument("--dir", type=Path, default=Path("/tmp"), help=where)
    args = parser.parse_args()
    if args.seconds <= 0 or args.repeat < 1 or args.concurrency < 1:
        parser.error("--seconds, --repeat and --concurrency must be positive")
    tracking = "a cgroup per run" if cgroups.base_dir() is not None else "session + tag sweep (no cgroup)"
    rounds = []
    # Every round's run logs are removed at the end, not between rounds: on ext4 without a journal each new inode
    # skips every one freed in the last ~30 s, so removing a round's ~2,000 logs made the next round's log files
    # cost it (a daemon removes logs once per --prune-interval, not between every few thousand runs).
    homes: list[Path] = []
    try:
        # An untimed round of each side first: the first round measured was the slowest on both sides, the
        # bare one more (~0.8x of its later rounds, fleetd's ~0.9x), which made the first ratio look better.
        bare_rate(1.0, args.concurrency)
        homes.append(Path(tempfile.mkdtemp(prefix="flb-dispatch-", dir=args.dir)))
        fleetd_rate(homes[-1], 1.0, args.concurrency)
        for _ in range(args.repeat):
            base, base_cpu = bare_rate(args.seconds, args.concurrency)
            homes.append(Path(tempfile.mkdtemp(prefix="flb-dispatch-", dir=args.dir)))
            rate, cpu, failed, threads, idle_cores = fleetd_rate(homes[-1], args.seconds, args.concurrency)
            rounds.append({"baseline_per_s": base, "fleetd_per_s": rate, "ratio": rate / base, "failed": failed,
                           "baseline_cpu_ms": base_cpu, "fleetd_cpu_ms": cpu, "fleetd_thread_cpu_ms": threads,
                           "idle_cores": idle_cores})  # fmt: skip
    finally:
        for home in homes:
            shutil.rmtree(home, ignore_errors=True)
    print(f"dispatch: runs of `true`, {args.concurrency} in flight, {args.seconds:g}s per side; tracking: {tracking}; "
          f"home in {args.dir} ({_fs_type(args.dir)})")  # fmt: skip
    print("(CPU: this process's milliseconds per spawn / per run, children not counted)")
    head = ("round", "bare asyncio /s", "CPU", "fleetd runs /s", "CPU", "ratio", "failed")
    print("  ".join(f"{h:>{w}}" for h, w in zip(head, (5, 15, 5, 14, 5, 6, 6), strict=True)))
    for i, r in enumerate(rounds, 1):
        print(f"{i:>5}  {r['baseline_per_s']:15.0f}  {r['baseline_cpu_ms']:5.2f}  {r['fleetd_per_s']:14.0f}  "
              f"{r['fleetd_cpu_ms']:5.2f}  {r['ratio']:5.2f}x  {r['failed']:>6}")  # fmt: skip
    for i, r in enumerate(rounds, 1):
        threads = sorted(r["fleetd_thread_cpu_ms"].items(), key=lambda kv: -kv[1])
        if threads:
            by_thread = ", ".join(f"{k} {v:.2f}" for k, v in threads)
            idle = f"{r['idle_cores']:.2f} of {os.cpu_count()}"
            print(f"round {i}: fleetd's CPU ms per run by thread: {by_thread}; cores left idle: {idle}")
    ratios = [r["ratio"] for r in rounds]
    print(f"ratio median {statistics.median(ratios):.2f}x (range {min(ratios):.2f}-{max(ratios):.2f}); target >= 0.50x")
    payload = {"seconds": args.seconds, "concurrency": args.concurrency, "tracking": tracking, "rounds": rounds}
    print(f"(JSON: {write_json('dispatch', payload, args.json)})")


if __name__ == "__main__":
    main()
