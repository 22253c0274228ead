"""Shell completion of the names a command takes: loops, profiles, backends, runs.

Names come from the daemon with a short timeout; with no daemon there is simply nothing to offer.
`fleetd completion bash|zsh|fish` prints the script to source (README: "Shell completion").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from fleetd.cli.client import Client, CliError
from fleetd.paths import socket_path

if TYPE_CHECKING:  # imported where used: every command module loads this one, completing is rare
    from click.shell_completion import CompletionItem


def _ask(path: str) -> list[dict[str, Any]]:
    try:
        answer = Client(socket_path(), timeout=1.0).call("GET", path)
    except (CliError, OSError, ValueError):
        return []
    return answer if isinstance(answer, list) else []


def _offer(words: list[str], incomplete: str) -> list[CompletionItem]:
    from click.shell_completion import CompletionItem

    # A comma-separated list (--profile a,b): complete its last element, keep what came before.
    head, _, last = incomplete.rpartition(",")
    prefix = head + "," if head else ""
    return [CompletionItem(prefix + w) for w in words if w.startswith(last)]


def loops(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    return _offer([lp["name"] for lp in _ask("/v1/loops")], incomplete)


def profiles(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    return _offer([p["name"] for p in _ask("/v1/profiles")], incomplete)


def backends(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    from fleetd.backends.registry import backend_names  # only while completing: no daemon needed

    return _offer(list(backend_names()), incomplete)


def profile_backends(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """The backends a profile can be of: those that run under a login or key."""
    from fleetd.backends.registry import routed_backends

    return _offer(list(routed_backends()), incomplete)


def runs(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    from click.shell_completion import CompletionItem

    recent = _ask("/v1/runs?limit=20")
    return [CompletionItem(str(r["id"]), help=f"{r['loop']} {r['status']}") for r in recent
            if str(r["id"]).startswith(incomplete)]  # fmt: skip


def _name_check(what: str) -> Callable[[click.Context, click.Parameter, str], str]:
    """A NAME argument checked by the daemon's rule before it goes into a request's path, where a '/' or
    an empty name would address another resource (and get its "Not Found")."""

    def check(ctx: click.Context, param: click.Parameter, value: str) -> str:
        from fleetd.errors import InvalidArgument  # here: `loop list`, which takes no name, loads neither
        from fleetd.names import checked_name, checked_route_name

        try:
            return checked_route_name(value) if what == "route" else checked_name(what, value)
        except InvalidArgument as e:
            raise CliError(e.message, exit_code=2) from None

    return check


loop_name = click.argument("name", shell_complete=loops, callback=_name_check("loop"))
profile_name = click.argument("name", shell_complete=profiles, callback=_name_check("profile"))
hook_name = click.argument("name", callback=_name_check("hook"))
key_name = click.argument("name", callback=_name_check("key"))
route_name = click.argument("name", callback=_name_check("route"))
run_id_arg = click.argument("run_id", shell_complete=runs)


@click.command("completion")
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
@click.pass_context
def completion(ctx: click.Context, shell: str) -> None:
    """Print the completion script for SHELL: eval "$(fleetd completion bash)" in ~/.bashrc.

    \b
    zsh:  eval "$(fleetd completion zsh)"   in ~/.zshrc
    fish: fleetd completion fish > ~/.config/fish/completions/fleetd.fish
    """
    from click.shell_completion import get_completion_class

    script = get_completion_class(shell)
    assert script is not None  # the Choice above admits only shells click knows
    click.echo(script(ctx.find_root().command, {}, "fleetd", "_FLEETD_COMPLETE").source())
