"""`GET /v1/doctor` and `loop add`'s warnings: the daemon gathers what it alone knows (its own PATH and
environment, the loops and profiles, the secret store it opened, the database's state), adds the
host facts, and lets `checks.py` judge. Backend knowledge comes from the adapters (`executable`,
`login_problem`, `login_argv`); nothing here names a backend."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from pathlib import Path

from fleetd import __version__
from fleetd.backends.registry import get_adapter
from fleetd.doctor import checks, facts
from fleetd.paths import Paths
from fleetd.profiles.service import ProfileService
from fleetd.records.loop import ChainStep, Loop
from fleetd.records.profile import Profile
from fleetd.routing.policy import loop_steps
from fleetd.store.loops import LoopStore

MAX_USER_PATH = 32 * 1024


def loop_backends(loop: Loop) -> list[str]:
    """Every backend a loop's runs may start: each chain step's and the reviewer's, in order."""
    return list(dict.fromkeys(step.backend for step in _steps(loop)))


def loop_warnings(loop: Loop, env: Mapping[str, str] | None = None) -> list[str]:
    """What `loop add` (and `loop edit`) warn about without refusing: a CLI of the loop's backends that the
    daemon's PATH does not find (the run would fail; `fleetd doctor` explains), an attempt timeout that can never
    apply. `env`: the daemon's."""
    path = _path(os.environ if env is None else env)
    warnings = []
    for backend in loop_backends(loop):
        executable = get_adapter(backend).executable
        if executable and facts.which(executable, path) is None:
            warnings.append(f"{checks.missing_cli_message(executable, path)}; see `fleetd doctor`")
    if loop.attempt_timeout_s is not None and loop.timeout_s is not None and loop.attempt_timeout_s >= loop.timeout_s:
        warnings.append(
            "--attempt-timeout is not shorter than --timeout: the run's own timeout ends every attempt first"
        )
    return warnings


class DoctorService:
    def __init__(
        self,
        paths: Paths,
        loops: LoopStore,
        profiles: ProfileService,
        store_problem: Callable[[], str | None],
        env: Mapping[str, str] | None = None,
        platform: str = sys.platform,
    ) -> None:
        self.paths = paths
        self.loops = loops
        self.profiles = profiles
        self.store_problem = store_problem
        self.env = os.environ if env is None else env
        self.platform = platform

    async def report(self, user_path: str | None = None) -> checks.Report:
        """Every check, from the daemon's side. `user_path`: the PATH of the shell asking, so a CLI that
        shell finds but the daemon does not can be told apart from one that is not installed."""
        loops = await self.loops.list()
        profiles = await self.profiles.list()
        daemon_path = _path(self.env)
        manager = facts.service_manager(self.env)
        clis = self._clis(loops, profiles, daemon_path, user_path, manager)
        profile_facts = await self._profiles(loops, profiles)
        keys = sum(1 for p in profiles if p.has_secret)
        store = await asyncio.to_thread(facts.secret_store_fact, self.paths.home, self.env, keys)
        report = checks.Report(
            daemon={
                "running": True,
                "pid": os.getpid(),
                "version": __version__,
                "home": str(self.paths.home),
                "path": daemon_path,
                "manager": manager,
            },
            checked=list(checks.CHECKS),
        )
        report.findings += checks.check_clis(clis)
        report.findings += checks.check_profiles(profile_facts)
        report.findings += checks.check_rotation(*await self._rotation(loops, profiles))
        report.findings += checks.check_loop_paths(await asyncio.to_thread(facts.loop_path_facts, loops))
        report.findings += checks.check_secret_store(store)
        report.findings += checks.check_socket(facts.socket_fact(self.paths, daemon_answers=True))
        disk = facts.disk_fact(self.paths.home)
        if disk is not None:
            report.findings += checks.check_disk(disk)
        report.findings += checks.check_database(checks.DatabaseFact(str(self.paths.db), self.store_problem()))
        executables = [c.executable for c in clis]
        try:
            user_home = Path.home()
        except (RuntimeError, KeyError):  # no HOME and no passwd entry: no per-user unit to look at
            user_home = None
        service = user_home and facts.service_fact(
            self.platform, user_home, self.env, self.paths.home, executables, user_path or daemon_path
        )
        if service is None or not service.installed:
            report.checked.remove("service")
            report.skipped.append(("service", "no service unit is installed" if service else "no service here"))
        else:
            report.findings += checks.check_service(service)
        return report

    def _clis(
        self, loops: list[Loop], profiles: list[Profile], daemon_path: str, user_path: str | None, manager: str | None
    ) -> list[checks.CliFact]:
        needed: dict[str, list[str]] = {}
        scheduled: set[str] = set()
        for loop in loops:
            for backend in loop_backends(loop):
                needed.setdefault(backend, []).append(f"loop {loop.name}")
                if loop.enabled:
                    scheduled.add(backend)
        for profile in profiles:
            needed.setdefault(profile.backend, []).append(f"profile {profile.name}")
        found = []
        for backend, users in needed.items():
            executable = get_adapter(backend).executable
            if not executable:
                continue
            found.append(
                checks.CliFact(
                    backend=backend,
                    executable=executable,
                    daemon_path=daemon_path,
                    found=facts.which(executable, daemon_path),
                    user_found=facts.which(executable, user_path),
                    needed_by=tuple(users),
                    scheduled=backend in scheduled,
                    manager=manager,
                )
            )
        return found

    async def _profiles(self, loops: list[Loop], profiles: list[Profile]) -> list[checks.ProfileFact]:
        enabled_loops = [lp for lp in loops if lp.enabled]
        found = []
        for profile in profiles:
            if not profile.enabled:
                continue  # out of rotation by the user's choice: nothing runs on it
            adapter = get_adapter(profile.backend)
            setup = await asyncio.to_thread(adapter.setup_problem, profile)
            problem = None if setup else await asyncio.to_thread(adapter.login_problem, profile, self.env)
            missing = await self.profiles.has_key_missing(profile)  # an unusable store: secret_store says so
            found.append(
                checks.ProfileFact(
                    name=profile.name,
                    backend=profile.backend,
                    login_problem=problem,
                    setup_problem=setup,
                    config_dir=profile.config_dir,
                    can_log_in=adapter.login_argv(profile) is not None,
                    has_key=profile.has_secret,
                    key_missing=missing,
                    key_store=self.profiles.secrets.description,
                    scheduled=any(_may_use(loop, profile) for loop in enabled_loops),
                )
            )
        return found

    async def _rotation(
        self, loops: list[Loop], profiles: list[Profile]
    ) -> tuple[list[checks.OutFact], dict[str, list[str]]]:
        """The profiles out of rotation, and the enabled loops and the gateway routes left with none to run on."""
        out: dict[str, checks.OutFact] = {}
        for profile in profiles:
            status = self.profiles.heartbeat.status(profile.name)
            if not profile.enabled:
                why, by_hand = "disabled by hand", True
            elif status.state in ("disabled", "parked"):
                why, by_hand = f"{status.state}{': ' + status.reason if status.reason else ''}", False
            else:
                continue
            out[profile.name] = checks.OutFact(profile.name, why, by_hand)
        stranded: dict[str, list[str]] = {}
        users = [(f"loop {lp.name}", [p.name for p in profiles if _may_use(lp, p)]) for lp in loops if lp.enabled]
        if self.profiles.routes is not None:  # a route names every profile it tries
            users += [(f"route {r.name}", list(dict.fromkeys(n for step in r.chain for n in step.profiles)))
                      for r in await self.profiles.routes.routes()]  # fmt: skip
        for user, usable in users:
            for name in usable:
                if name in out:
                    out[name] = replace(out[name], loops=(*out[name].loops, user))
            if usable and all(name in out for name in usable):
                stranded[user] = usable
        return list(out.values()), stranded


def _steps(loop: Loop) -> Iterable[ChainStep]:
    yield from loop_steps(loop)
    if loop.review is not None:
        yield loop.review


def _may_use(loop: Loop, profile: Profile) -> bool:
    """Whether one of the loop's steps could run on `profile` (named, or its backend's within the tiers)."""
    for step in _steps(loop):
        if step.backend != profile.backend:
            continue
        if (profile.name in step.profiles) if step.explicit else (profile.tier in loop.tiers):
            return True
    return False


def _path(env: Mapping[str, str]) -> str:
    return env.get("PATH") or os.defpath


def checked_user_path(value: str | None) -> str | None:
    """The asking shell's PATH from the query: text of a sane length, or refused (InvalidArgument)."""
    from fleetd.errors import InvalidArgument

    if value is None:
        return None
    if len(value) > MAX_USER_PATH or "\x00" in value:
        raise InvalidArgument(f"invalid path: at most {MAX_USER_PATH} characters, no NUL")
    return value
