"""Loops as the user defines them: `loop add` and `loop edit` go through one validation path
(`define`), and nothing is saved unless all of it passes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Any

from fleetd.backends.registry import get_adapter, routed_backends
from fleetd.errors import InvalidArgument, NoProfile
from fleetd.loops.model import PATH_FIELDS, edited_input, validate_loop_input
from fleetd.loops.scheduler import Scheduler
from fleetd.loops.whynot import NotFiring, usable_at_next_run
from fleetd.records.loop import Loop
from fleetd.records.profile import Profile
from fleetd.routing.policy import apply_routing_input, loop_policy, loop_steps
from fleetd.routing.router import Resolved, World, resolve
from fleetd.store.loops import LoopStore
from fleetd.store.profiles import ProfileStore

WorldOf = Callable[[list[Any]], Awaitable[tuple[World, dict[str, Profile]]]]


class LoopService:
    def __init__(
        self, loops: LoopStore, scheduler: Scheduler, profiles: ProfileStore, *, default_tz: str,
        world: WorldOf | None = None,
    ) -> None:  # fmt: skip
        self.loops = loops
        self.scheduler = scheduler
        self.profiles = profiles
        self.default_tz = default_tz
        self.world = world  # the profiles as the router sees them now (ProfileService.world)

    async def explain(self, loop: Loop) -> tuple[list[Resolved] | None, NotFiring | None]:
        """`loop show`: for an agent loop, each chain step's candidates now and the profiles passed over
        (None for a command loop); and why the loop did not fire, if it did not."""
        resolved = None
        if get_adapter(loop.backend).needs_profile and self.world is not None:
            policy = loop_policy(loop)
            world, _ = await self.world(list(policy.chain))
            resolved = resolve(policy, world)
        usable = None if resolved is None else usable_at_next_run(resolved, loop.next_fire_at)
        return resolved, await self.scheduler.not_firing(loop, usable)

    async def define(self, body: dict[str, Any], on_disk: Collection[str] = PATH_FIELDS) -> Loop:
        """A `loop add` body checked in full and turned into a Loop: its fields, its routing against the
        profiles that exist, what each backend of its chain needs, and a profile that can run each step
        (`on_disk`: the path fields looked for on disk, `validate_loop_input`)."""
        loop = validate_loop_input(body, self.default_tz, on_disk=on_disk)
        if body.get("backend") and not body.get("chain"):
            # What the named backend itself refuses (`--command` for an agent) first: the routing's refusal (tiers,
            # profiles) sent the user to fix those, to be refused again for this.
            get_adapter(loop.backend).validate(loop)
        profiles = await self.profiles.list()
        apply_routing_input(body, loop, profiles, routed_backends())
        for step in loop_steps(loop):
            get_adapter(step.backend).validate(loop)
        check_profiles(loop, profiles)
        return loop

    async def add(self, body: dict[str, Any]) -> Loop:
        return await self.scheduler.add(await self.define(body))

    async def edit(self, name: str, changes: dict[str, Any]) -> Loop:
        """`changes` over the stored loop, checked as a whole like `loop add` (but for what it does not change on
        disk); takes effect at the next fire."""
        old = await self.loops.get(name)
        changed_paths = [field for field in PATH_FIELDS if changes.get(field) is not None]
        try:
            new = await self.define(edited_input(old, changes), on_disk=changed_paths)
        except InvalidArgument as e:
            if old.command is not None and e.message.endswith("takes no --command"):  # a command loop's new backend
                raise InvalidArgument(f"{e.message}: the loop has one (`--clear-command` drops it)") from None
            raise
        return await self.scheduler.edit(old, new)


def check_profiles(loop: Loop, profiles: Sequence[Profile]) -> None:
    """Every agent step (the reviewer's too) has a profile that can authenticate, or the loop would only
    fail at its first run: refused now, with the command that fixes it."""
    steps = [*loop_steps(loop), *([loop.review] if loop.review else [])]
    for step in steps:
        adapter = get_adapter(step.backend)
        if not adapter.needs_profile:
            continue
        mine = [p for p in profiles if p.name in step.profiles] if step.explicit else [
            p for p in profiles if p.backend == step.backend
        ]  # fmt: skip
        if not mine:
            raise NoProfile(f"no {step.backend} profile: add one with {adapter.setup_hint()}")
        if all(adapter.auth_problem(p) for p in mine):
            hints = "; ".join(f"{p.name}: {adapter.auth_hint(p)}" for p in mine)
            raise NoProfile(f"no {step.backend} profile can authenticate: {hints}")
