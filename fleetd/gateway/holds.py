"""What gateway calls let in but not finished are expected to cost, per client key: its daily cost cap counts
them, so calls that arrive together cannot each go past it (twenty parallel calls spent sixteen times a small cap:
each saw only what was written before it came in). Pure but for the monotonic clock it is given."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Holds:
    clock: Callable[[], float] = time.monotonic
    # token -> (key, amount, expires at): a call that never ends its hold (a client gone before its answer began)
    # gives it up when its route's timeout has passed.
    _held: dict[int, tuple[str, float, float]] = field(default_factory=dict)
    _last_cost: dict[str, float] = field(default_factory=dict)  # each key's latest finished call's cost
    _next: int = 0

    def held(self, key: str) -> float:
        now = self.clock()
        for token in [t for t, (_, _, expires) in self._held.items() if expires <= now]:
            del self._held[token]
        return sum(amount for k, amount, _ in self._held.values() if k == key)

    def expected(self, key: str) -> float | None:
        """What the key's next call is expected to cost: its latest call's; None before one has finished."""
        return self._last_cost.get(key)

    def hold(self, key: str, amount: float, ttl: float) -> int:
        self._next += 1
        self._held[self._next] = (key, amount, self.clock() + ttl)
        return self._next

    def release(self, token: int | None, cost: float | None = None) -> None:
        """The call ended (cost: what it cost, when it reached a provider). Twice, or an unknown token: nothing."""
        held = self._held.pop(token, None) if token is not None else None
        if held is not None and cost:
            self._last_cost[held[0]] = cost
