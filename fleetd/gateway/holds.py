"""What gateway calls let in but not finished are expected to cost, per client key: its daily cost cap counts
them, so calls that arrive together cannot each go past it (twenty parallel calls spent sixteen times a small cap:
each saw only what was written before it came in). Pure but for the monotonic clock it is given. A key is whatever
identifies it to the caller (its hash: a key added under a removed one's name is another key)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Holds:
    clock: Callable[[], float] = time.monotonic
    # token -> (key, route, amount, expires at): a call that never ends its hold (a client gone before its answer
    # began) gives it up when its route's call timeout has passed.
    _held: dict[int, tuple[str, str, float, float]] = field(default_factory=dict)
    # Each key's latest finished call's cost on each route: a key's calls on a cheap route made a call on a dear one
    # look cheap, and it passed the cap.
    _last_cost: dict[tuple[str, str], float] = field(default_factory=dict)
    # Each route's latest finished call's cost, whoever's key: what a key's first call there is expected to cost (it
    # was held at all that was left of the cap, and passed it).
    _route_cost: dict[str, float] = field(default_factory=dict)
    _next: int = 0

    def held(self, key: str) -> float:
        now = self.clock()
        for token in [t for t, (_, _, _, expires) in self._held.items() if expires <= now]:
            del self._held[token]
        return sum(amount for k, _, amount, _ in self._held.values() if k == key)

    def expected(self, key: str, route: str) -> float | None:
        """What the key's next call on `route` is expected to cost: its latest one's, else the route's latest call's
        (another key's); None before one has finished there (or before `remember` told it, after a restart)."""
        own = self.own(key, route)
        return own if own is not None else self._route_cost.get(route)

    def own(self, key: str, route: str) -> float | None:
        """What the key's latest call on `route` cost (None: none since the start, nor told by `remember`)."""
        return self._last_cost.get((key, route))

    def remember(self, key: str | None, route: str, cost: float) -> None:
        """A cost read from the call log (what the key's latest call on `route` cost before a restart; key None: the
        route's latest call's, whoever's)."""
        if key is None:
            self._route_cost.setdefault(route, cost)
        else:
            self._last_cost.setdefault((key, route), cost)

    def hold(self, key: str, route: str, amount: float, ttl: float) -> int:
        self._next += 1
        self._held[self._next] = (key, route, amount, self.clock() + ttl)
        return self._next

    def forget(self, route: str) -> None:
        """The route was removed: a new one of its name may cost anything."""
        self._route_cost.pop(route, None)
        for pair in [pair for pair in self._last_cost if pair[1] == route]:
            del self._last_cost[pair]

    def release(self, token: int | None, cost: float | None = None, route: str | None = None) -> None:
        """The call ended (cost: what it cost, when it reached a provider; `route`, for a call that succeeded: what
        the route's calls cost, whether its key has a cap or not). Twice, or an unknown token: nothing more."""
        if cost and route is not None:
            self._route_cost[route] = cost
        held = self._held.pop(token, None) if token is not None else None
        if held is not None and cost:
            self._last_cost[(held[0], held[1])] = cost
