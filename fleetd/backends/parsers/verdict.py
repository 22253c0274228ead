"""A reviewer agent's verdict, found in its final message (any backend's `ParsedOutput.final_text`).

The reviewer is asked to answer `{"verdict": "accept"|"reject", "missing": [...], "reason": "..."}`; models wrap
it in prose or a ```json fence, or think aloud with a draft first. So: every JSON object anywhere in the text
is a candidate, and the one that starts last wins. Only strict JSON counts (trailing commas, single quotes:
no verdict): a reviewer whose answer cannot be read must never be taken to have accepted.
"""

from __future__ import annotations

import json
from typing import Any

from fleetd.records.result import VERDICTS, Verdict

MAX_TEXT = 256 * 1024  # the end of a longer message is searched (the verdict comes last)
MAX_CANDIDATES = 200  # "{" positions tried, from the end: a message of braces costs bounded time
MAX_ITEMS = 50  # `missing` entries kept
MAX_ITEM_CHARS = 2000


def extract_verdict(text: object) -> Verdict | None:
    """The last well-formed verdict object in `text`, or None. Never raises."""
    try:
        return _extract(text)
    except Exception:  # fail-soft: a reviewer's text is arbitrary model output
        return None


def _extract(text: object) -> Verdict | None:
    if not isinstance(text, str) or "verdict" not in text:
        return None
    text = text[-MAX_TEXT:]
    decoder = json.JSONDecoder()
    tried = 0
    start = text.rfind("{")
    while start != -1 and tried < MAX_CANDIDATES:
        tried += 1
        try:
            value, _ = decoder.raw_decode(text, start)
        except (ValueError, RecursionError):
            value = None
        found = _verdict(value)
        if found is not None:
            return found
        start = text.rfind("{", 0, start)
    return None


def _verdict(value: Any) -> Verdict | None:
    if not isinstance(value, dict):
        return None
    kind = value.get("verdict")
    kind = kind.strip().lower() if isinstance(kind, str) else None
    if kind not in VERDICTS:
        return None
    reason = value.get("reason")
    return Verdict(
        verdict=kind,  # type: ignore[arg-type]  # checked against VERDICTS just above
        missing=_missing(value.get("missing")),
        reason=reason.strip()[:MAX_ITEM_CHARS] if isinstance(reason, str) else "",
    )


def _missing(value: object) -> tuple[str, ...]:
    """A list of findings; a lone string is one finding; numbers and objects are shown as JSON."""
    items = [value] if isinstance(value, str) else value if isinstance(value, list) else []
    out: list[str] = []
    for item in items[:MAX_ITEMS]:
        shown = item if isinstance(item, str) else json.dumps(item, ensure_ascii=False, default=str)
        if shown.strip():
            out.append(shown.strip()[:MAX_ITEM_CHARS])
    return tuple(out)
