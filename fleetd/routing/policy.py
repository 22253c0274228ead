"""A loop's routing policy: its input checked when the loop is added, and the `Policy` the router
gets at run time. Pure."""

from __future__ import annotations

import math
import re
from collections.abc import Collection
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from fleetd.errors import InvalidArgument
from fleetd.records.loop import DEFAULT_ON_EXHAUSTED, ON_EXHAUSTED, ChainStep
from fleetd.routing.chain import parse_chain, parse_tiers
from fleetd.routing.router import Policy
from fleetd.timefmt import DurationError, parse_duration

if TYPE_CHECKING:
    from fleetd.records.loop import Loop
    from fleetd.records.profile import Profile

MAX_USD = 1_000_000.0  # a bound on any money figure a user types
MAX_TOKENS = 10**12
_TOKENS_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmM]?)\s*$")
ROUTING_FIELDS = (
    "chain",
    "tiers",
    "max_cost",
    "max_tokens",
    "daily_cost",
    "on_exhausted",
    "verify",
    "verify_timeout",
    "repair",
    "review",
    "attempt_timeout",
)
MAX_REPAIR = 5
MAX_VERIFY_CHARS = 4096


def parse_usd(value: object, flag: str) -> float | None:
    """A money amount: finite, 0 < x ≤ MAX_USD."""
    if value is None or value == "":
        return None
    try:
        amount = float(str(value).strip().lstrip("$"))
    except ValueError:
        raise InvalidArgument(f"invalid {flag} {value!r}: an amount in USD, e.g. 2.50") from None
    if not math.isfinite(amount) or not 0 < amount <= MAX_USD:
        raise InvalidArgument(f"invalid {flag} {value!r}: more than 0 and at most {MAX_USD:,.0f} USD")
    return amount


def parse_tokens(value: object, flag: str) -> int | None:
    """A token count: `2000000`, `500k`, `2M`."""
    if value is None or value == "":
        return None
    m = _TOKENS_RE.match(str(value))
    if not m:
        raise InvalidArgument(f"invalid {flag} {value!r}: a number of tokens, e.g. 500k or 2M")
    # Decimal: in floats 4.1M is 4,099,999.9999999995 tokens
    count = Decimal(m.group(1)) * {"": 1, "k": 1000, "m": 1000000}[m.group(2).lower()]
    if not 1 <= count <= MAX_TOKENS:
        raise InvalidArgument(f"invalid {flag} {value!r}: between 1 and {MAX_TOKENS:.0e} tokens")
    if count != int(count):  # 1.5 was saved as 1
        raise InvalidArgument(f"invalid {flag} {value!r}: a whole number of tokens, e.g. 500k or 2M")
    return int(count)


def apply_routing_input(body: dict[str, Any], loop: Loop, profiles: list[Profile], routed: Collection[str]) -> None:
    """Check a loop's routing options against the profiles that exist, and set them on `loop`.
    `routed` names the backends that run under profiles (the others take no routing)."""
    given = [key for key in ROUTING_FIELDS if body.get(key) not in (None, "", [])]
    if loop.backend not in routed and not body.get("chain"):
        if given:
            raise InvalidArgument(f"--{given[0].replace('_', '-')} needs an agent backend (--backend or --chain)")
        return
    chain = body.get("chain")
    if chain not in (None, ""):
        if not isinstance(chain, str):
            raise InvalidArgument("--chain must be a comma-separated list of BACKEND[@MODEL] or PROFILE[@MODEL]")
        if loop.profiles:
            raise InvalidArgument("give either --chain or --profile, not both (a profile can be a chain step)")
        if loop.model:
            raise InvalidArgument("give the model per step in --chain (STEP@MODEL), not with --model")
        steps = parse_chain(chain, routed, {p.name: p.backend for p in profiles})
        explicit_backend = body.get("backend")
        if explicit_backend in routed and explicit_backend != steps[0].backend:
            raise InvalidArgument(f"--backend {explicit_backend} disagrees with --chain; give only --chain")
        loop.chain = steps
        loop.backend = steps[0].backend
    else:
        check_pool(loop.profiles, profiles, loop.backend)
    if body.get("tiers") not in (None, ""):
        loop.tiers = parse_tiers(body["tiers"])
    loop.max_cost = parse_usd(body.get("max_cost"), "--max-cost")
    loop.max_tokens = parse_tokens(body.get("max_tokens"), "--max-tokens")
    loop.daily_cost = parse_usd(body.get("daily_cost"), "--daily-cost")
    on_exhausted = body.get("on_exhausted") or DEFAULT_ON_EXHAUSTED
    if on_exhausted not in ON_EXHAUSTED:
        raise InvalidArgument(f"invalid --on-exhausted {on_exhausted!r}: use escalate or wait")
    loop.on_exhausted = on_exhausted
    if body.get("attempt_timeout") not in (None, ""):
        try:
            loop.attempt_timeout_s = parse_duration(str(body["attempt_timeout"]))
        except DurationError as e:
            raise InvalidArgument(f"invalid --attempt-timeout: {e}") from None
    _apply_acceptance_input(body, loop)
    review = body.get("review")
    if review not in (None, ""):
        if not isinstance(review, str):
            raise InvalidArgument("--review must be one step: BACKEND[@MODEL] or PROFILE[@MODEL]")
        steps = parse_chain(review, routed, {p.name: p.backend for p in profiles}, flag="--review")
        if len(steps) != 1:
            raise InvalidArgument("--review takes one step: BACKEND[@MODEL] or PROFILE[@MODEL]")
        loop.review = steps[0]
    if loop.repair and not (loop.verify or loop.review):
        raise InvalidArgument("--repair needs --verify or --review: a repair round answers a check's findings")
    _check_tiers_reach(loop, profiles)


def _apply_acceptance_input(body: dict[str, Any], loop: Loop) -> None:
    verify = body.get("verify")
    if verify not in (None, ""):
        if not isinstance(verify, str) or "\x00" in verify or len(verify) > MAX_VERIFY_CHARS:
            raise InvalidArgument(f"--verify must be a shell command of at most {MAX_VERIFY_CHARS} characters")
        loop.verify = verify
    if body.get("verify_timeout") not in (None, ""):
        if loop.verify is None:  # it times the --verify command: alone it did nothing
            raise InvalidArgument("--verify-timeout needs --verify")
        try:
            loop.verify_timeout_s = parse_duration(str(body["verify_timeout"]))
        except DurationError as e:
            raise InvalidArgument(f"invalid --verify-timeout: {e}") from None
    repair = body.get("repair")
    if repair not in (None, ""):
        if isinstance(repair, bool) or not str(repair).isdigit() or int(repair) > MAX_REPAIR:
            raise InvalidArgument(f"invalid --repair {repair!r}: a number of rounds from 0 to {MAX_REPAIR}")
        loop.repair = int(repair)


def _check_tiers_reach(loop: Loop, profiles: list[Profile]) -> None:
    """A backend step whose every profile is outside the loop's tiers would never run: say so now."""
    steps = [(step, "--profile or --chain") for step in loop_steps(loop)]
    if loop.review is not None:  # the reviewer is routed under the same tiers
        steps.append((loop.review, "--review"))
    for step, flags in steps:
        if step.explicit:
            continue
        mine = [p for p in profiles if p.backend == step.backend]
        if mine and not any(p.tier in loop.tiers for p in mine):
            names = ", ".join(f"{p.name} ({p.tier})" for p in mine)
            wanted = ",".join(dict.fromkeys([*loop.tiers, *(p.tier for p in mine)]))
            raise InvalidArgument(
                f"no {step.backend} profile is in the tiers {','.join(loop.tiers)} (it has {names}): "
                f"allow them with --tiers {wanted}, or name one in {flags}"
            )


def check_pool(pool: list[str], profiles: list[Profile], backend: str) -> None:
    """When a loop is added: every named profile exists and belongs to the loop's backend."""
    by_name = {p.name: p for p in profiles}
    for name in pool:
        profile = by_name.get(name)
        if profile is None:
            raise InvalidArgument(f"unknown profile {name!r} in --profile")
        if profile.backend != backend:
            raise InvalidArgument(f"profile {name!r} is for backend {profile.backend}, not {backend}")


def loop_steps(loop: Loop) -> list[ChainStep]:
    """The loop's chain; a loop without one is one step: its backend over its pool with its model."""
    return list(loop.chain) or [ChainStep(loop.backend, tuple(loop.profiles), loop.model)]


def loop_policy(loop: Loop) -> Policy:
    return Policy(
        chain=tuple(loop_steps(loop)),
        tiers=frozenset(loop.tiers),
        max_cost=loop.max_cost,
        max_tokens=loop.max_tokens,
        on_exhausted=loop.on_exhausted,
        repairs=loop.repair,
    )
