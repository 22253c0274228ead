"""Limits, windows, state and switching with the clock passed in: hours of windows in microseconds."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from fleetd.errors import InvalidArgument
from fleetd.heartbeat.limits import parse_limit, parse_limits
from fleetd.heartbeat.state import (
    Typical,
    after_attempt,
    cost_cap_taken,
    cost_room_at,
    evaluate,
    headroom,
    no_room_for_another,
)
from fleetd.heartbeat.switch import Standing, choose_active
from fleetd.heartbeat.windows import Ledger, window_usage
from fleetd.records.profile import Limit
from fleetd.records.result import WindowState
from fleetd.records.usage import Consumption, ProfileStatus

T0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
H = timedelta(hours=1)
NEAR = 0.9  # the daemon's default --near-limit


@pytest.mark.parametrize(
    ("text", "limit"),
    [
        ("5h=4000000tok", Limit(18000, 4_000_000, "tok")),
        ("7d=40Mtok", Limit(604800, 40_000_000, "tok")),
        ("24h=500req", Limit(86400, 500, "req")),
        ("30d=12.5usd", Limit(2592000, 12.5, "usd")),
        ("90m=2ktok", Limit(5400, 2000, "tok")),
        # In floats 4.1M is 4,099,999.9999999995: refused as "tok is counted in whole numbers"
        ("5h=4.1Mtok", Limit(18000, 4_100_000, "tok")),
        ("1d=1.1kreq", Limit(86400, 1100, "req")),
        ("30d=0.3kusd", Limit(2592000, 300, "usd")),
    ],
)
def test_parse_limit(text: str, limit: Limit) -> None:
    assert parse_limit(text) == limit


@pytest.mark.parametrize(
    "text", ["5h", "5h=tok", "=5tok", "5h=10parsecs", "forever=1tok", "5h=0tok", "1d=0.5req", "1d=1.5tok"]
)
def test_bad_limits(text: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_limit(text)


def test_two_limits_for_one_window_are_refused() -> None:
    with pytest.raises(InvalidArgument, match="same window"):
        parse_limits(["5h=1tok", "300m=2tok"])


def records(*pairs: tuple[float, int]) -> list[Consumption]:
    return [Consumption(T0 + timedelta(hours=h), tokens=t) for h, t in pairs]


def test_rolling_window_counts_only_the_last_window() -> None:
    limit = Limit(5 * 3600, 1000, "tok")
    recs = records((0, 300), (2, 300), (4.5, 300))
    assert window_usage(recs, limit, T0 + 4.9 * H).used == 900
    later = window_usage(recs, limit, T0 + 5.5 * H)  # the first one has rolled out
    assert later.used == 600 and later.eases_at == T0 + 7 * H
    assert headroom([later], [], T0 + 5.5 * H) == pytest.approx(0.4)
    assert headroom([], [], T0) == 1.0
    # The backend's own report wins over fleetd's count, as in `evaluate` (it ranked a profile at 42 % used
    # as the one with the most headroom, 100 %):
    assert headroom([later], [WindowState(300, 42.0, T0 + 9 * H)], T0 + 5.5 * H) == pytest.approx(0.58)
    assert headroom([later], [WindowState(300, 42.0, T0 + 5 * H)], T0 + 5.5 * H) == pytest.approx(0.4)  # past


def test_full_window_is_full_until_enough_rolls_out() -> None:
    limit = Limit(5 * 3600, 1000, "tok")
    recs = records((0, 600), (1, 300), (2, 200))
    usage = window_usage(recs, limit, T0 + 3 * H)
    assert usage.exceeded
    assert usage.full_until(recs, T0 + 3 * H) == T0 + 5 * H  # dropping the 600 brings it to 500


def test_a_full_window_reads_only_the_records_that_must_leave_it() -> None:
    # A full profile's check sorted and built every record of its window: 0.3 s on the event loop per refused gateway
    # call at 100,000 records (bench/no_room.py). Oldest first, it stops at the one whose leaving makes room.
    now = T0 + 20 * H
    limit = Limit(24 * 3600, 10_000, "req")
    ledger = Ledger([limit])
    ledger.add_many((T0 + timedelta(seconds=7 * i), 0, 1, 0.0, None) for i in range(10_000))
    (usage,) = ledger.advance(now)
    read = 0

    def records() -> Iterator[Consumption]:
        nonlocal read
        for record in ledger.inside(0):
            read += 1
            yield record

    assert usage.no_room_until(records, 1.0, 1.0, now) == T0 + timedelta(seconds=7) + 24 * H  # two must leave
    assert read == 2
    read = 0
    assert usage.full_until(records(), now) == T0 + 24 * H  # the oldest leaving makes it not full
    assert read == 1


def test_one_more_attempt_has_room_only_beside_what_is_pending() -> None:
    # Calls that started together each saw the window as it stood before any of them ended: `1d=30req` took 31.
    now = T0 + 3 * H
    reqs = [Consumption(T0 + timedelta(hours=h), 10, 1) for h in (0, 1)]
    two = window_usage(reqs, Limit(24 * 3600, 3, "req"), now)
    assert two.no_room_until(lambda: reqs, 0.0, 1.0, now) is None  # 2 of 3 used: room for one more
    # One under way takes the last request: room again when the oldest record leaves the window.
    assert two.no_room_until(lambda: reqs, 1.0, 1.0, now) == T0 + 24 * H
    # Four under way: only once theirs (counted as of now) leave.
    assert two.no_room_until(lambda: reqs, 4.0, 1.0, now) == now + 24 * H
    toks = window_usage(reqs, Limit(24 * 3600, 100, "tok"), now)
    assert toks.no_room_until(lambda: reqs, 60.0, 20.0, now) is None  # 20 used, 60 under way, 20 more: 100
    # At 81 of 100 with 20 an attempt, the next one would pass the limit: it waits for room (one at 2,451 of
    # 3,000 tokens was let in though each used 817).
    assert toks.no_room_until(lambda: reqs, 61.0, 20.0, now) == T0 + 24 * H
    # What one uses not known: no room only once what is used and pending reaches the limit.
    assert toks.no_room_until(lambda: reqs, 79.0, None, now) is None
    assert toks.no_room_until(lambda: reqs, 80.0, None, now) == T0 + 24 * H
    assert window_usage([], Limit(3600, 5, "usd"), now).no_room_until(list, 5.0, None, now) == now + H
    # One whose typical attempt is over the limit alone is let into an empty window (held at more than the limit,
    # it was passed over for ever: no attempt, so no new typical size).
    assert window_usage([], Limit(3600, 100, "tok"), now).no_room_until(list, 0.0, 5000.0, now) is None


def test_the_profiles_view_counts_requests_tokens_and_calls_not_recorded_yet() -> None:
    now = T0 + 3 * H
    reqs = [Consumption(T0 + timedelta(hours=h), 10, 1) for h in (0, 1)]
    two = window_usage(reqs, Limit(24 * 3600, 3, "req"), now)
    toks = window_usage(reqs, Limit(24 * 3600, 100, "tok"), now)
    # The third value: taken by what is under way (it may come back as that ends), not by what is recorded.
    assert no_room_for_another([two, toks], lambda i: reqs, [], 1, None, None, now) == (
        "1d=3req: 2 used, 1 attempt(s) under way", T0 + 24 * H, True)  # fmt: skip
    assert no_room_for_another([two], lambda i: reqs, [], 0, None, None, now) is None
    # A finished call the gateway has not written yet counts (back-to-back calls went past a limit).
    unrecorded = Consumption(now, 30, 1, 0.0)
    assert no_room_for_another([two], lambda i: reqs, [], 0, None, unrecorded, now) == (
        "1d=3req: 3 used", T0 + 24 * H, False)  # fmt: skip
    # Tokens at what recent attempts used; not judged so before one has ended.
    assert no_room_for_another([toks], lambda i: reqs, [], 4, None, None, now) is None
    assert no_room_for_another([toks], lambda i: reqs, [], 3, Typical(20, 0.1), None, now) is None  # 100: fits
    full = no_room_for_another([toks], lambda i: reqs, [], 4, Typical(20, 0.1), None, now)
    assert full == ("1d=100tok: 20 used, 4 attempt(s) under way, one uses about 20", T0 + 25 * H, True)
    # The gateway holds a call of unknown size at all that is left: its calls go one at a time.
    gateway = no_room_for_another([toks], lambda i: reqs, [], 1, None, None, now, unknown_takes_rest=True)
    assert gateway is not None and gateway[0] == "1d=100tok: 20 used, 1 attempt(s) under way" and gateway[2]
    assert no_room_for_another([toks], lambda i: reqs, [], 0, None, None, now, unknown_takes_rest=True) is None
    # The backend's reported windows judge it while any is live (as `evaluate`).
    assert no_room_for_another([two], lambda i: reqs, [WindowState(300, 10.0, now + H)], 1, None, None, now) is None


def test_a_money_limits_reasons_write_money() -> None:
    # "1d=0.005usd: 0.0027312 used, one uses about 0.0009104": raw floats where every other message writes dollars.
    now = T0 + 3 * H
    spent = [Consumption(T0 + timedelta(hours=h), 10, 1, cost) for h, cost in ((0, 0.0018208), (1, 0.0009104))]
    cap = window_usage(spent, Limit(24 * 3600, 0.003, "usd"), now)
    full = no_room_for_another([cap], lambda i: spent, [], 1, Typical(10, 0.0009104), None, now)
    assert full is not None
    assert full[0] == "1d=0.003usd: $0.0027 used, 1 attempt(s) under way, one costs about $0.00091"
    over = window_usage([*spent, Consumption(T0 + 2 * H, 10, 1, 0.0009104)], Limit(24 * 3600, 0.003, "usd"), now)
    status = evaluate(ProfileStatus(), [over], [T0 + 24 * H], [], now, NEAR)
    assert (status.state, status.reason) == ("exhausted", "1d=0.003usd: $0.0036 used")


def test_a_daily_cost_cap_has_room_only_for_an_attempt_that_fits() -> None:
    assert cost_cap_taken(5.0, 5.0, 0, None)  # spent
    assert not cost_cap_taken(4.0, 5.0, 0, None)
    assert not cost_cap_taken(3.0, 5.0, 1, Typical(1000, 1.0))  # 3 + 1 under way + 1 more: 5, fits
    assert cost_cap_taken(3.0, 5.0, 2, Typical(1000, 1.0))  # 6
    assert cost_cap_taken(1.63, 2.0, 0, Typical(1000, 0.817))  # one at $1.63 of $2 each costing $0.82 was let in
    assert not cost_cap_taken(4.9, 5.0, 9, None)  # what one costs is not known before one has ended
    assert not cost_cap_taken(0.0, 5.0, 0, Typical(1000, 9.0))  # over the cap alone: let in when nothing is spent


def test_a_sum_a_rounding_apart_is_as_full_and_eases_at_the_same_record() -> None:
    # Found by the ledger's property test: the Ledger's running sum 4.5 against 4.499999999999999 from scratch
    # (the same costs in another order) eased a 3 USD window one record apart.
    limit = Limit(7 * 24 * 3600, 3.0, "usd")
    recs = [Consumption(T0 + i * H, 1, 1, 1.5) for i in range(3)]
    usage = window_usage(recs, limit, T0 + 3 * H)
    nudged = replace(usage, used=4.499999999999999)
    assert usage.exceeded and nudged.exceeded
    assert usage.full_until(recs, T0 + 3 * H) == nudged.full_until(recs, T0 + 3 * H) == T0 + H + 7 * 24 * H
    at_the_limit = replace(usage, used=2.9999999999999996)  # 3.0 as another order sums it: full as 3.0 is
    assert at_the_limit.exceeded


def test_state_goes_near_limit_then_exhausted_then_back_unconfirmed() -> None:
    limit = Limit(5 * 3600, 1000, "tok")
    recs = records((0, 920))
    now = T0 + H
    usage = window_usage(recs, limit, now)
    near = evaluate(ProfileStatus(), [usage], [None], [], now, NEAR)
    assert near.state == "near_limit"
    recs += records((1.5, 100))
    now = T0 + 2 * H
    usage = window_usage(recs, limit, now)
    full = evaluate(near, [usage], [usage.full_until(recs, now)], [], now, NEAR)
    assert (full.state, full.exhausted_until) == ("exhausted", T0 + 5 * H)
    later = window_usage(recs, limit, T0 + 4 * H)
    assert evaluate(full, [later], [later.full_until(recs, T0 + 4 * H)], [], T0 + 4 * H, NEAR) == full  # not yet
    now = T0 + 5.1 * H
    usage = window_usage(recs, limit, now)
    back = evaluate(full, [usage], [None], [], now, NEAR)
    assert back.state == "available" and back.unconfirmed
    confirmed = after_attempt(back, "succeeded", None, None, "", now)
    assert confirmed == ProfileStatus("available")


def test_a_limit_raised_or_cleared_frees_a_profile_its_own_count_exhausted_but_not_one_the_provider_did() -> None:
    # A trial exhausted a profile by its own --limit 1d=1req, raised it to 100req: it stayed exhausted for a day.
    recs = records((0, 1))
    now = T0 + H
    tight = window_usage(recs, Limit(86400, 1, "req"), now)
    counted = evaluate(ProfileStatus(), [tight], [tight.full_until(recs, now)], [], now, NEAR)
    assert (counted.state, counted.counted) == ("exhausted", True)
    raised = window_usage(recs, Limit(86400, 100, "req"), now)
    assert evaluate(counted, [raised], [None], [], now, NEAR).state == "available"
    assert evaluate(counted, [], [], [], now, NEAR).state == "available"  # --clear-limits
    assert evaluate(counted, [tight], [tight.full_until(recs, now)], [], now, NEAR) == counted  # the same limit
    # What the provider said (a 429's reset) is not fleetd's to take back: it stays until then.
    told = after_attempt(ProfileStatus(), "failed", "rate_limited", T0 + 5 * H, "429", now)
    assert evaluate(told, [raised], [None], [], now, NEAR) == told
    # A call that got through anyway (routed by a world read a moment before) proves nothing against fleetd's own
    # count: it flipped the profile to available, and the next calls went through (a trial's 1d=3req took 11).
    assert after_attempt(counted, "succeeded", None, None, "", now) == counted
    assert after_attempt(told, "succeeded", None, None, "", now).state == "available"  # the provider's word: taken back


def test_reported_windows_win_over_the_estimate() -> None:
    limit = Limit(5 * 3600, 1000, "tok")
    usage = window_usage(records((0, 10)), limit, T0 + H)  # fleetd thinks: 1 %
    reported = [WindowState(300, 100.0, T0 + 3 * H)]
    status = evaluate(ProfileStatus(), [usage], [None], reported, T0 + H, NEAR)
    assert (status.state, status.exhausted_until) == ("exhausted", T0 + 3 * H)
    assert "5h window at 100% (reported)" in status.reason
    mostly = evaluate(ProfileStatus(), [usage], [None], [WindowState(10080, 93.0, T0 + 50 * H)], T0 + H, NEAR)
    assert mostly.state == "near_limit"


@pytest.mark.parametrize(
    ("used_percent", "state", "reason"),
    [
        (0.0, "available", ""),
        (40.0, "available", ""),  # 40 % is 0.4 of the window: far from the near-limit mark
        (89.0, "available", ""),
        (93.0, "near_limit", "93% of a window used"),
        (100.0, "exhausted", "5h window at 100% (reported)"),
    ],
)
def test_a_reported_percentage_is_read_as_a_percentage(used_percent: float, state: str, reason: str) -> None:
    # fleetd's own estimate says nothing (no usage): the backend's percentage alone decides.
    status = evaluate(ProfileStatus(), [], [], [WindowState(300, used_percent, T0 + 3 * H)], T0 + H, NEAR)
    assert (status.state, status.reason) == (state, reason)


def test_rate_limit_auth_and_unknown_reset() -> None:
    now = T0
    limited = after_attempt(ProfileStatus(), "failed", "rate_limited", T0 + 2 * H, "You've hit your limit", now)
    assert (limited.state, limited.exhausted_until) == ("exhausted", T0 + 2 * H)
    no_reset = after_attempt(ProfileStatus(), "failed", "rate_limited", None, "429", now)
    assert no_reset.exhausted_until == now + timedelta(seconds=60)  # the default reset
    dead = after_attempt(ProfileStatus(), "failed", "auth", None, "Invalid API key", now)
    assert dead.state == "disabled" and "Invalid API key" in dead.reason
    assert evaluate(dead, [], [], [], now + 100 * H, NEAR) == dead  # only a person re-enables it
    assert after_attempt(limited, "failed", "transient", None, "529", now) == limited


def st(name: str, state: str = "available", headroom: float = 1.0, position: int = 0, tier: str = "subscription",
       until: datetime | None = None) -> Standing:  # fmt: skip
    return Standing(name, position, tier, ProfileStatus(state, until), headroom)  # type: ignore[arg-type]


def test_choose_active_keeps_a_usable_current_and_switches_to_most_headroom() -> None:
    a, b, c = st("a", headroom=0.5, position=0), st("b", headroom=0.8, position=1), st("c", headroom=0.8, position=2)
    assert choose_active([a, b, c], "a", pinned=False) == ("a", "still available")
    a_near = st("a", "near_limit", 0.05, 0)
    name, why = choose_active([a_near, b, c], "a", pinned=False)
    assert name == "b" and "a is near_limit" in why  # ties go to the configured order
    assert choose_active([a_near, b, c], "a", pinned=True)[0] == "a"  # a pin holds while usable
    a_gone = st("a", "exhausted", 0.0, 0, until=T0 + H)
    name, why = choose_active([a_gone, b, c], "a", pinned=True)
    assert name == "b" and why.startswith("pinned a is exhausted")
    assert choose_active([a_gone], "a", pinned=False) == (None, "no profile has headroom")


@pytest.mark.parametrize(
    ("standings", "chosen"),
    [
        # The most headroom wins whatever the configured order, among available profiles first...
        ([st("low", headroom=0.1, position=0), st("high", headroom=0.9, position=1)], "high"),
        ([st("high", headroom=0.9, position=0), st("low", headroom=0.1, position=1)], "high"),
        ([st("a", "available", 0.3, 0), st("b", "available", 0.6, 1), st("c", "available", 0.45, 2)], "b"),
        # ...then among near_limit ones, when nothing is available.
        ([st("n1", "near_limit", 0.02, 0), st("n2", "near_limit", 0.08, 1), st("x", "exhausted", 0.0, 2)], "n2"),
        # available beats near_limit even with less headroom; equal headroom goes to the configured order.
        ([st("near", "near_limit", 0.09, 0), st("avail", headroom=0.2, position=1)], "avail"),
        ([st("second", headroom=0.5, position=1), st("first", headroom=0.5, position=0)], "first"),
        # Equal headroom: the cheaper tier first, whatever the order (a metered key won by its name).
        ([st("cc-api", position=0, tier="metered"), st("cc-sub", position=1)], "cc-sub"),
        ([st("paid", position=0, tier="metered"), st("box", position=2, tier="local")], "box"),
        # The cheaper tier first, whatever the headroom: a metered key without limits (always 100 %) took over
        # from a subscription that had room, and billed every run.
        ([st("paid", headroom=1.0, position=0, tier="metered"), st("sub-b", headroom=0.24, position=1)], "sub-b"),
        # ...among available profiles: a subscription near its limit does not win over an available key.
        ([st("paid", headroom=1.0, tier="metered"), st("sub", "near_limit", 0.05, 1)], "paid"),
    ],
)
def test_choose_active_picks_the_most_headroom(standings: list[Standing], chosen: str) -> None:
    name, why = choose_active(standings, None, pinned=False)
    assert name == chosen and why.startswith("no active profile")


def test_an_active_key_gives_way_to_a_cheaper_tier_available_again() -> None:
    """A metered profile never nears a limit it does not have: once active it stayed, after the subscription it
    stood in for had reset."""
    paid, sub = st("paid", tier="metered", position=1), st("sub-a", headroom=0.9, position=0)
    assert choose_active([paid, sub], "paid", pinned=False) == (
        "sub-a",
        "sub-a (subscription) is available: cheaper than paid (metered)",
    )
    assert choose_active([paid, st("sub-a", "exhausted", 0.0, 0)], "paid", pinned=False) == ("paid", "still available")
    assert choose_active([paid, sub], "paid", pinned=True) == ("paid", "pinned")  # the user's choice stands


# -- the ledger: windows kept as records come and go equal windows summed from scratch ------------

LEDGER_LIMITS = [Limit(3600, 500, "tok"), Limit(5 * 3600, 20, "req"), Limit(7 * 86400, 3.0, "usd")]
SESSIONS = [None, "s1", "s2", "s3"]
# (kind, minutes from T0, minutes of the record's time relative to the clock, tokens, session); in steps of ten
# minutes, so that records fall on window edges and on the clock itself
OPS = hs.lists(
    hs.tuples(
        hs.sampled_from(["agent", "agents", "attempt", "advance"]),
        hs.integers(0, 30).map(lambda n: 10 * n),
        hs.integers(-40, 3).map(lambda n: 10 * n),
        hs.integers(0, 300),
        hs.sampled_from(SESSIONS),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(ops=OPS, prune_at=hs.sampled_from([1, 3, 4096]), bulk=hs.sampled_from([1, 256]))
def test_the_ledger_equals_a_recomputation_from_scratch(ops: list, prune_at: int, bulk: int) -> None:
    """Any interleaving of agent records, attempt records (which take their session over) and a clock that moves
    on: after every step, each window's use, when it eases and when it is no longer full equal `window_usage`
    over the records `UsageStore.since` would return."""
    ledger = Ledger(LEDGER_LIMITS)
    ledger.PRUNE_AT = prune_at  # type: ignore[misc]
    ledger.BULK = bulk  # type: ignore[misc]
    records: list[tuple[str, Consumption, str | None]] = []
    now = T0
    for kind, step, offset, tokens, session in ops:
        now = max(now, T0 + timedelta(minutes=step))  # the clock never goes back here (see the next test)
        at, cost = now + timedelta(minutes=offset), tokens / 1000
        if kind in ("agent", "attempt"):
            records.append((kind, Consumption(at, tokens, 1, cost), session))
            ledger.add(at, tokens, 1, cost, session, attempt=kind == "attempt")
        elif kind == "agents":  # a part of a scan: several at once, out of time order
            many = [
                (at, tokens, 1, cost, session),
                (at - timedelta(minutes=70), 7, 1, 0.5, None),
                (at, 1, 1, 0, session),
            ]
            records += [("agent", Consumption(a, t, r, c), s) for a, t, r, c, s in many]
            ledger.add_many(many)
        if kind == "agents" and offset % 20 == 0:  # an attempt's record right after a part, before the beat
            records.append(("attempt", Consumption(at, 1, 1, 0.0), session))
            ledger.add(at, 1, 1, 0.0, session, attempt=True)
        taken = {s for k, _, s in records if k == "attempt" and s}
        counted = [c for k, c, s in records if k == "attempt" or s not in taken]
        usages = ledger.advance(now)
        for i, (limit, usage) in enumerate(zip(LEDGER_LIMITS, usages, strict=True)):
            expected = window_usage(counted, limit, now)
            assert usage.used == pytest.approx(expected.used, abs=1e-9)
            assert usage.eases_at == expected.eases_at
            if expected.exceeded:
                oldest_first = sorted(counted, key=lambda c: c.at)
                assert usage.full_until(ledger.inside(i), now) == expected.full_until(oldest_first, now)


def test_the_ledger_sums_again_when_the_clock_goes_back() -> None:
    ledger = Ledger([Limit(3600, 1000, "tok")])
    for minutes in (0, 10, 50):
        ledger.add(T0 + timedelta(minutes=minutes), 100)
    assert [u.used for u in ledger.advance(T0 + timedelta(minutes=65))] == [200]  # minute 0 left the hour
    assert [u.used for u in ledger.advance(T0 + timedelta(minutes=30))] == [200]  # minutes 0 and 10, again
    assert [u.used for u in ledger.advance(T0 + timedelta(minutes=55))] == [300]


def test_a_ledger_drops_what_no_window_reaches() -> None:
    ledger = Ledger([Limit(3600, 1e9, "tok")])
    ledger.PRUNE_AT = 10  # type: ignore[misc]
    for minutes in range(100):
        ledger.add(T0 + timedelta(minutes=minutes), 1)
    assert [u.used for u in ledger.advance(T0 + timedelta(minutes=99))] == [60]
    assert len(ledger) == 60


def test_a_daily_cost_cap_has_room_again_when_enough_of_its_oldest_costs_have_left_the_window() -> None:
    costs = [(T0, 0.40), (T0 + H, 0.30), (T0 + 2 * H, 0.30)]  # $1.00 of a $1.00 cap
    assert cost_room_at(costs, 1.0, None) == T0 + 24 * H  # the first $0.40 leaves: $0.60, under it
    assert cost_room_at(costs, 1.0, Typical(1000, 0.5)) == T0 + 25 * H  # room for one at $0.50: $0.30 left
    assert cost_room_at(costs, 2.0, None) is None  # room now
    assert cost_room_at([(T0, 0.40)], 1.0, Typical(1000, 0.7)) == T0 + 24 * H  # nothing left in the window
