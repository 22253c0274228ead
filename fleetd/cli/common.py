"""What every command module shares: where the daemon is, reading flags, and printing a result.

A command parses its flags, makes one call, and hands the answer to `render`: the same answer is
printed as JSON with `--json` and through the command's text renderer otherwise.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from fleetd.cli.client import Client, CliError
from fleetd.paths import Paths, UnsafeDirectory, resolve, socket_path

if TYPE_CHECKING:
    import re

json_flag = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


class LazyGroup(click.Group):
    """A group some (or all) of whose commands are imported only when used: `lazy` maps a command's name
    to "module:attribute". `fleetd loop list` then loads neither the other groups nor `loop add`'s options;
    `--help` and completion load them all, for their help."""

    def __init__(self, *args: Any, lazy: dict[str, str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = lazy

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.lazy:
            return super().get_command(ctx, cmd_name)
        module, _, attribute = self.lazy[cmd_name].partition(":")
        command: click.Command = getattr(importlib.import_module(module), attribute)
        return command


def paths() -> Paths:
    return resolve()


def client(timeout: float | None = 30.0) -> Client:
    return Client(socket_path(), timeout=timeout)


def render(answer: Any, as_json: bool, text: Callable[[Any], str | None]) -> None:
    """The one way a command prints: JSON as the daemon said it, or the command's text."""
    if as_json:
        emit_json(answer)
        return
    shown = text(answer)
    if shown is not None:
        click.echo(shown)


JSON_INDENT = 2  # how --json lays JSON out: json.dumps' own layout with this indent


def emit_json(data: Any) -> None:
    click.echo(json_text(data))


_NESTED = frozenset((dict, list))
# Between the items of an object nested in a list, with indent=2: what json.dumps writes there.
_ITEM = ",\n    "


def json_text(data: Any) -> str:
    """`json.dumps(data, indent=2)`, byte for byte. With an indent, json.dumps leaves its C encoder for one in
    Python (400 ms for 10,000 runs); a list of flat objects (every `… list --json`) is written by the C encoder
    instead, with the indent as its separators. Its strings never hold a raw newline (JSON escapes it), and
    nothing but a row begins with `{`, so "},\n    {" only ever stands between two rows."""
    import json

    if (
        not isinstance(data, list)
        or not data
        or not all(type(row) is dict and row and _NESTED.isdisjoint(map(type, row.values())) for row in data)
    ):
        return json.dumps(data, indent=JSON_INDENT)
    flat = json.dumps(data, separators=(_ITEM, ": "))  # [{"id": 1,\n    "loop": "x"},\n    {"id": 2, …}]
    return "[\n  {\n    " + flat[2:-2].replace("}" + _ITEM + "{", "\n  },\n  {\n    ") + "\n  }\n]"


# Where a string's own quote (never escaped) stands beside a separator's characters: a value that begins with `:`
# (`:":`), ends with `,` or `},{` (`,",`, `,"}`), a key that begins with `:` or `,`, or ends with a backslash.
_LOOKALIKES = (b':":', b',",', b',"}', b'{":', b',":', b'\\\\":')


def laid_out_rows(body: bytes) -> bytes | None:
    """`json_text(json.loads(body))`, byte for byte, without decoding: for the compact JSON SQLite writes of a list
    of flat objects that all begin with the same key (`GET /v1/runs` answers it so). For 10,000 runs, decoding and
    encoding again was half of `runs list --json`'s time. None for any other body: the caller decodes it.

    Why plain replacing is safe there: in compact JSON a `"` inside a string is always escaped (`\\"`), so an
    unescaped `"` is a string's first or last character. `":` then stands after a key, or as `\\":` inside a string,
    and `,"` between two members, unless a string's own quote stands beside a `:` or `,`: a value that begins with
    `:` or ends with `,` (`_LOOKALIKES`): such a body is decoded. What json.dumps escapes and SQLite does not
    (non-ASCII, DEL) is escaped as json.dumps does. A float SQLite writes with an exponent (|x| ≥ 1e15 or < 1e-4;
    no run lasts that long, or is that short but 0) would keep SQLite's form of the same number."""
    if body == b"[]":
        return body
    head = body[1 : body.find(b'"', 3) + 2]  # {"id":
    if not (body.startswith(b'[{"') and body.endswith(b"}]") and head.endswith(b'":')):
        return None
    if body[len(head) + 1 : len(head) + 2] == b" " or b', "' in body:
        return None  # not compact: written with other separators (", ", ": "), by json.dumps say
    if not head[2:-2].replace(b"_", b"").isalnum():
        return None
    if body.count(b'},{"') != body.count(b"}," + head) or b'":[' in body or b'":{' in body:
        return None  # an object that does not begin with the first one's key, or a nested value
    if any(lookalike in body for lookalike in _LOOKALIKES):
        return None
    if not body.isascii() or b"\x7f" in body:
        import re

        try:
            text = body.decode()
        except UnicodeDecodeError:
            return None
        body = re.sub("[\x7f-\U0010ffff]", _escape, text).encode()
    members = body[2:-2].replace(b'":', b'": ').replace(b'\\": ', b'\\":').replace(b',"', b',\n    "')
    return b"[\n  {\n    " + members.replace(b'},{"', b'\n  },\n  {\n    "') + b"\n  }\n]"


def _escape(match: re.Match[str]) -> str:
    """A character json.dumps escapes (ensure_ascii) and SQLite does not: DEL and beyond ASCII."""
    n = ord(match.group())
    if n < 0x10000:
        return f"\\u{n:04x}"
    n -= 0x10000  # a UTF-16 surrogate pair, as json.dumps writes one
    return f"\\u{0xD800 | (n >> 10):04x}\\u{0xDC00 | (n & 0x3FF):04x}"


def show(path: str, as_json: bool, text: Callable[[Any], str | None]) -> None:
    """`render` of what GET `path` answers, for a route that can lay its answer out as `emit_json` does
    (`?indent=`): with --json that answer is printed as it comes, neither decoded nor encoded again (for
    `loop list` of many loops that was a fifth of the command). A daemon that does not say it laid it out
    (an older one, still running) gets the answer decoded and printed as `emit_json` prints it."""
    if not as_json:
        render(client().call("GET", path), as_json, text)
        return
    answer = client().request("GET", f"{path}?indent={JSON_INDENT}")
    if answer.status >= 400 or answer.headers.get("x-fleetd-indent") != str(JSON_INDENT):
        emit_json(answer.decoded())
        return
    click.echo(answer.body)


def seconds(value: str, flag: str) -> float:
    from fleetd.timefmt import DurationError, parse_duration

    try:
        return parse_duration(value)
    except DurationError as e:
        raise CliError(f"invalid {flag}: {e}", exit_code=2) from None


def positive_seconds(ctx: click.Context, param: click.Parameter, value: str | float) -> float:
    """A click callback for the CLI's own waits (`--wait 60s`, `--interval 2`): a duration as every other flag takes
    one (a bare number is seconds; `60s` was refused as "not a valid float"), above zero, within the longest."""
    from fleetd.timefmt import DurationError, parse_duration

    try:
        return parse_duration(str(value))
    except DurationError as e:
        raise click.BadParameter(str(e), ctx=ctx, param=param) from None


def ensure_home(where: Paths) -> None:
    """Creates fleetd's directories, or says in one line why it cannot (e.g. FLEETD_HOME=/proc/x)."""
    try:
        where.ensure()
    except UnsafeDirectory as e:
        raise CliError(str(e)) from None
    except OSError as e:
        place = e.filename or where.home
        raise CliError(f"cannot create fleetd's directory {place}: {e.strerror or e}") from None


def absolute(path: str) -> str:
    """A path as the daemon needs it: it does not share the CLI's cwd or `~`."""
    return os.path.abspath(os.path.expanduser(path))


def checked_run_id(value: str) -> str:
    if not value.isdigit():
        raise CliError(f"invalid run id {value!r}: run ids are numbers", exit_code=2)
    return value


def fields_text(fields: list[tuple[str, Any]]) -> str:
    """`key  value` lines, aligned (a value's later lines under its first); empty values left out."""
    width = max((len(k) for k, _ in fields), default=0)
    under = "\n" + " " * (width + 2)
    return "\n".join(
        f"{key.ljust(width)}  {str(value).rstrip(chr(10)).replace(chr(10), under)}"
        for key, value in fields
        if value not in (None, "")
    )


def circuit_text(circuit: dict[str, Any] | None) -> str:
    from fleetd.cli.format import local_time

    if not circuit:
        return "-"
    if circuit["state"] == "open":
        return f"open until {local_time(circuit['open_until'])}"
    return circuit["state"].replace("_", "-")


def warn(answer: dict[str, Any]) -> None:
    """What the daemon saved but warns about (a CLI not on its PATH, a route's unpriced profile), on stderr, with
    --json too."""
    for warning in answer.get("warnings") or []:
        click.echo(f"warning: {warning}", err=True)
