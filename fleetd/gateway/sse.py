"""Server-sent events, split incrementally from the bytes of a stream, each kept as its raw bytes (the
client gets them unchanged) with its event name and data. Pure."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")


@dataclass(frozen=True)
class Event:
    raw: bytes  # including its terminating blank line
    name: str | None
    data: str

    def json(self) -> Any:
        try:
            return json.loads(self.data)
        except ValueError:
            return None


class EventSplitter:
    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[Event]:
        """The events `chunk` completes; a partial one is held until its end arrives."""
        self._buffer += chunk
        events = []
        start = 0
        while (m := _END.search(self._buffer, start)) is not None:
            events.append(parse_event(self._buffer[start : m.end()]))
            start = m.end()
        self._buffer = self._buffer[start:]
        return events

    def rest(self) -> bytes:
        """What never ended in a blank line (a stream cut short)."""
        rest, self._buffer = self._buffer, b""
        return rest


def parse_event(raw: bytes) -> Event:
    name: str | None = None
    data: list[str] = []
    for line in raw.decode("utf-8", "replace").splitlines():
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "event":
            name = value
        elif field == "data":
            data.append(value)
    return Event(raw, name, "\n".join(data))
