"""What scripts and shells rely on: each command's `--json` keys (pinned: a key added, renamed or dropped is
a change to the contract and must change this file and the README too), the usage table's width, and
shell completion of names."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.harness import FLEETD, Daemon

LOOP = {"agent_args", "attempt_timeout_s", "backend", "catch_up", "chain", "command", "created_at", "daily_cost",
        "dir", "enabled", "env", "last_fire_at", "last_run", "max_cost", "max_tokens", "model", "name", "next_fire_at",
        "on_exhausted", "output_cap_bytes", "profiles", "prompt", "prompt_file", "repair", "review", "routed",
        "running_run_id", "schedule", "tiers", "timeout_s", "updated_at", "verify", "verify_timeout_s",
        "waiting_until"}  # fmt: skip
RUN = {"attempts", "backend", "duration_s", "error", "exit_code", "finished_at", "id", "log_path", "loop", "pid",
       "profile", "scheduled_at", "skip_reason", "skipped_count", "started_at", "status", "trigger",
       "wait_until"}  # fmt: skip
PROFILE = {"auth", "auth_hint", "backend", "base_url", "circuit", "config_dir", "created_at", "daily_cost",
           "disabled_reason", "default_reset_s", "enabled", "has_api_key", "limits", "model", "name", "prices_per_mtok",
           "tier"}  # fmt: skip
USAGE = {"active", "backend", "circuit", "daily_cost", "exhausted_until", "garbled_lines", "in_flight", "pinned",
         "profile", "reason", "reported_windows", "resets_in_s", "state", "tier", "unconfirmed", "windows"}  # fmt: skip
HEALTH = {"home", "loops", "options", "pid", "running_runs", "socket", "started_at", "status", "store", "uptime_s",
          "version"}  # fmt: skip


def test_every_commands_json_keys(daemon: Daemon, tmp_path: Path) -> None:
    assert set(daemon.json("daemon", "status")) == HEALTH

    # `loop add` also says what it saved but warns about (a CLI not on the daemon's PATH): `fleetd doctor`.
    assert set(daemon.json("loop", "add", "jc", "--every", "1h", "--paused", "--command", "echo hi")) == LOOP | {
        "not_firing",
        "resolved",
        "warnings",
    }
    run = daemon.json("loop", "run", "jc")
    assert set(run) == RUN
    daemon.wait_run(run["id"])
    assert [set(lp) for lp in daemon.json("loop", "list")] == [LOOP]
    shown = daemon.json("loop", "show", "jc")
    # `resolved` is there for every loop (null for a command loop, which has no chain): it was absent.
    assert set(shown) == LOOP | {"not_firing", "resolved"} and shown["resolved"] is None
    assert set(shown["schedule"]) >= {"kind", "expr", "timezone"}
    assert set(shown["last_run"]) == {"id", "started_at", "status"}

    assert [set(r) for r in daemon.json("runs", "list")] == [RUN]
    full = daemon.json("runs", "show", str(run["id"]))
    assert set(full) == RUN | {"attempt_list", "route"}

    added = daemon.json("profile", "add", "jp", "--backend", "gemini", "--config-dir", str(tmp_path / "g"))
    assert set(added) == PROFILE
    assert [set(p) for p in daemon.json("profile", "list")] == [PROFILE]
    assert set(daemon.json("profile", "show", "jp")) == PROFILE
    assert set(daemon.json("profile", "edit", "jp", "--model", "gemini-2.5-flash")) == PROFILE
    # (`profile set-key --json`, which needs a secret store, is pinned in test_edit.py.)
    # `loop edit` answers like `loop add`: the loop, and what it warns about.
    assert set(daemon.json("loop", "edit", "jc", "--timeout", "5m")) == LOOP | {"not_firing", "resolved", "warnings"}

    assert [set(u) for u in daemon.json("usage")] == [USAGE]
    assert set(daemon.json("usage", "show", "jp")) == USAGE
    assert set(daemon.json("stats")) == {"since", "until", "by", "loop", "groups", "total"}


def test_loop_add_and_edit_answer_the_loop_as_loop_show_does(daemon: Daemon) -> None:
    # They answered the input's numbers (timeout_s 90 where show has 90.0), and edit had no not_firing.
    added = daemon.json("loop", "add", "same", "--every", "1h", "--command", "true", "--timeout", "90s")
    assert added.pop("warnings") == [] and added == daemon.json("loop", "show", "same")
    edited = daemon.json("loop", "edit", "same", "--paused")
    assert edited.pop("warnings") == [] and edited == daemon.json("loop", "show", "same")
    assert edited["not_firing"] is not None and edited["timeout_s"] == 90.0


def test_usage_table_fits_120_columns_and_explains_its_marks(daemon: Daemon, tmp_path: Path) -> None:
    for n in range(3):
        limits = ("--limit", "5h=4000000tok", "--limit", "7d=90usd")
        name = f"a-rather-long-profile-name-{n}"
        daemon.cli("profile", "add", name, "--backend", "codex", "--config-dir", str(tmp_path / f"c{n}"), *limits)
    text = daemon.cli("usage").stdout
    assert max(len(line) for line in text.splitlines()) <= 120
    assert "ACTIVE *: the profile its backend uses next" in text
    assert "CIRCUIT" not in text and "CIRCUIT" in daemon.cli("usage", "--wide").stdout
    assert "window 5h" in daemon.cli("usage", "show", "a-rather-long-profile-name-0").stdout
    missing = daemon.cli("usage", "show", "nobody", check=False)
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1


def _complete(daemon: Daemon, line: str) -> list[str]:
    """What bash completion offers for the last word of `line` (click's protocol: `type,value` lines)."""
    words = line.split(" ")
    env = {**daemon.env, "_FLEETD_COMPLETE": "bash_complete", "COMP_WORDS": line, "COMP_CWORD": str(len(words) - 1)}
    result = subprocess.run([FLEETD], env=env, capture_output=True, text=True, timeout=30, check=True)
    return [row.split(",", 1)[1] for row in result.stdout.splitlines()]


def test_completion_offers_loop_profile_backend_names_and_runs(daemon: Daemon, tmp_path: Path) -> None:
    daemon.cli("loop", "add", "nightly-tests", "--every", "1h", "--paused", "--command", "true")
    daemon.cli("profile", "add", "cc-work", "--backend", "claude_code", "--config-dir", str(tmp_path / "cc"))
    run = daemon.json("loop", "run", "nightly-tests")
    assert "nightly-tests" in _complete(daemon, "fleetd loop show night")
    assert _complete(daemon, "fleetd profile show cc-") == ["cc-work"]
    assert _complete(daemon, "fleetd loop add x --profile jp,cc") == ["jp,cc-work"]
    assert "claude_code" in _complete(daemon, "fleetd profile add x --backend ")
    assert "command" not in _complete(daemon, "fleetd profile add x --backend ")  # no profile runs a command
    assert "command" in _complete(daemon, "fleetd loop add x --backend ")
    assert str(run["id"]) in _complete(daemon, "fleetd runs show ")
    for shell in ("bash", "zsh", "fish"):
        assert "_FLEETD_COMPLETE" in daemon.cli("completion", shell).stdout


def test_completion_without_a_daemon_offers_nothing_and_says_nothing(tmp_path: Path) -> None:
    env = {**os.environ, "FLEETD_HOME": str(tmp_path), "_FLEETD_COMPLETE": "bash_complete",
           "COMP_WORDS": "fleetd loop show ", "COMP_CWORD": "3"}  # fmt: skip
    result = subprocess.run([FLEETD], env=env, capture_output=True, text=True, timeout=30)
    assert (result.returncode, result.stdout.strip(), result.stderr) == (0, "", "")
