"""`fleetd runs logs` made readable: a run log's lines through the renderer of the backend whose attempt wrote
them (`Adapter.log_renderer`, pure, one per backend), done here in the daemon so the CLI stays import-light.

One run log may hold attempts of several backends: before each attempt the executor notes
`[fleetd] route: attempt N: PROFILE …` (always a whole line: `RunLog.note`), and the attempt's backend is
looked up by its number. fleetd's own lines, and every line of a backend without a renderer (a command's
output), pass through byte for byte.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable

from fleetd.backends.registry import get_adapter
from fleetd.errors import FleetdError
from fleetd.loops.scrub import Scrubber

_ATTEMPT_NOTE = re.compile(rb"^\[fleetd\] route: attempt (\d+): ")
_FLEETD = b"[fleetd] "

Renderer = Callable[[str], str | None]


def renderer_for(backend: str | None) -> Renderer | None:
    if not backend:
        return None
    try:
        return get_adapter(backend).log_renderer()
    except FleetdError:  # a backend this fleetd no longer knows: its lines stay as they are
        return None


async def readable(
    source: AsyncIterator[bytes],
    *,
    backend: str,
    backend_of: Callable[[int], Awaitable[str | None]],
    scrubber: Scrubber,
) -> AsyncIterator[bytes]:
    """`source` (a run log's bytes, live or not) rendered line by line. `backend` renders until the first
    attempt note; `backend_of(N)` names attempt N's backend. A line still open at a chunk's end waits for the
    next chunk (a followed log shows it once it ends); at the end of the source it is rendered as it is."""
    view = _View(renderer_for(backend), backend_of, scrubber)
    rest = b""
    async for chunk in source:
        lines = (rest + chunk).split(b"\n")
        rest = lines.pop()
        out = [await view.line(raw) for raw in lines]
        if text := b"".join(out):
            yield text
    if rest and (text := await view.line(rest, last=True)):
        yield text


class _View:
    def __init__(self, renderer: Renderer | None, backend_of: Callable[[int], Awaitable[str | None]],
                 scrubber: Scrubber) -> None:  # fmt: skip
        self.renderer = renderer
        self.backend_of = backend_of
        self.scrubber = scrubber
        self.pending: int | None = None  # an attempt announced whose backend is not looked up yet

    async def line(self, raw: bytes, last: bool = False) -> bytes:
        """One line (without its newline) as it is shown; b"" to leave it out. A line passed through keeps
        its bytes, and the log's last line its lack of a newline."""
        end = b"" if last else b"\n"
        if raw.startswith(_FLEETD):
            if found := _ATTEMPT_NOTE.match(raw):
                # Looked up at its first line of output: the attempt's row is written after this note.
                self.pending = int(found.group(1))
            return raw + end
        if self.pending is not None:
            number, self.pending = self.pending, None
            self.renderer = renderer_for(await self.backend_of(number))
        if self.renderer is None:
            return raw + end
        shown = self.renderer(raw.rstrip(b"\r").decode("utf-8", errors="replace"))
        if shown is None:
            return b""
        # The renderer decodes JSON: a key the raw bytes held only as an escape would appear here.
        return ((self.scrubber.text(shown) or "") + "\n").encode()
