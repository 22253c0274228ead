"""A loop's escalation chain: the workers that may do its work, in the order to try them. Pure.

A step is `BACKEND[@MODEL]` (every profile of that backend in an allowed tier) or `PROFILE[@MODEL]`
(that one profile, whatever its tier: naming it is the deliberate choice). The old form
`--backend B --profile A,C --model M` is a one-step chain over the pool A, C.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from fleetd.errors import InvalidArgument
from fleetd.records.loop import ChainStep
from fleetd.records.profile import TIERS


def parse_chain(
    text: str, backends: Collection[str], profile_backends: Mapping[str, str], flag: str = "--chain"
) -> list[ChainStep]:
    """`local-qwen,claude_code@sonnet,codex` → steps. A name that is a backend (of those that run
    under profiles, `backends`) is a backend step; otherwise it must be a profile (`profile_backends`
    maps each profile to its backend). `flag` names the option in errors (`--review` takes one step)."""
    steps: list[ChainStep] = []
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            raise InvalidArgument(f"invalid {flag} {text!r}: empty step (use e.g. local-qwen,claude_code@sonnet)")
        name, _, model = item.partition("@")
        if "@" in item and not model:
            raise InvalidArgument(f"invalid {flag} step {item!r}: nothing after '@'")
        if "@" in model:
            raise InvalidArgument(f"invalid {flag} step {item!r}: one @MODEL per step")
        if name in backends:
            step = ChainStep(name, (), model or None)
        elif name in profile_backends:
            step = ChainStep(profile_backends[name], (name,), model or None)
        else:
            raise InvalidArgument(f"unknown backend or profile {name!r} in {flag}")
        if step in steps:  # tried again right after it failed: the same answer, twice the cost
            raise InvalidArgument(f"{flag} lists the step {item!r} twice")
        steps.append(step)
    return steps


def parse_tiers(value: object) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not items:
        raise InvalidArgument(f"invalid --tiers {value!r}: use a comma-separated list of {', '.join(TIERS)}")
    tiers = []
    for item in items:
        tier = str(item).strip()
        if tier not in TIERS:
            raise InvalidArgument(f"invalid tier {tier!r} in --tiers (one of: {', '.join(TIERS)})")
        if tier not in tiers:
            tiers.append(tier)
    return tuple(tiers)
