"""Room checks on a full profile: what judging "no room for another attempt" costs when a profile's window is full,
by how many records the window holds, beside the same check on a window with room (which reads no record).

    .venv/bin/python bench/no_room.py [--records 1000,10000,100000] [--calls 200]

A gateway call, and a run reading the world, judge every candidate profile's limits (`heartbeat.state.
no_room_for_another` over the profile's ledger, as `Heartbeat.no_room` does). With room, that is a few sums; on a
full window it also says when there is room again, from the window's oldest records. A client that keeps calling a
route whose profile is full pays that on every refused call, on the daemon's event loop. The window holds N request
records over the last 22 hours, its `1d=Nreq` limit reached; the baseline is the same ledger under `1d=(N+10)req`.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import counts, write_json  # noqa: E402
from fleetd.heartbeat.limits import parse_limit  # noqa: E402
from fleetd.heartbeat.state import no_room_for_another  # noqa: E402
from fleetd.heartbeat.windows import Ledger  # noqa: E402


def per_check_us(records: int, limit: int, calls: int) -> tuple[float, bool]:
    """Microseconds per check of a ledger of `records` request records under `1d=<limit>req` (the records spread over
    the last 22 hours), and whether it had no room."""
    now = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    ledger = Ledger([parse_limit(f"1d={limit}req")])
    apart = 22 * 3600 / records
    ledger.add_many((now - timedelta(seconds=(records - i) * apart), 0, 1, 0.0, None) for i in range(records))
    ledger.advance(now)
    full = False
    start = time.perf_counter()
    for _ in range(calls):
        found = no_room_for_another(ledger.advance(now), ledger.inside, [], 0, None, None, now)
        full = found is not None
    return (time.perf_counter() - start) * 1e6 / calls, full


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", default="1000,10000,100000", help="comma-separated window sizes")
    parser.add_argument("--calls", type=int, default=200, help="checks timed per size")
    parser.add_argument("--json", type=Path, help="where to write the figures (default bench/results/no_room.json)")
    args = parser.parse_args()
    sizes = counts(parser, "--records", args.records)
    if args.calls < 1:
        parser.error("--calls must be positive")
    rows = []
    print(f"room check of one profile, {args.calls} checks per size (µs per check)")
    print(f"{'records':>8}  {'full':>9}  {'with room':>9}  {'ratio':>6}")
    for n in sizes:
        full_us, was_full = per_check_us(n, n, args.calls)
        room_us, had_room = per_check_us(n, n + 10, args.calls)
        assert was_full and not had_room
        rows.append({"records": n, "full_us": full_us, "room_us": room_us, "ratio": full_us / room_us})
        print(f"{n:>8}  {full_us:9.1f}  {room_us:9.1f}  {full_us / room_us:5.1f}x")
    print(f"(JSON: {write_json('no_room', {'calls': args.calls, 'results': rows}, args.json)})")


if __name__ == "__main__":
    main()
