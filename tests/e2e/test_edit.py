"""Changing things in place: `loop edit`, `profile edit`, `profile set-key`, and what a loop removed and
added again keeps of the old one (nothing).

One real daemon for the module, driven through the real CLI; each test uses its own names.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.e2e.test_bad_input import _request
from tests.e2e.test_json_contract import PROFILE
from tests.e2e.test_loops_and_runs import LOOP_KEYS
from tests.harness import Daemon, wait_until


@pytest.fixture(scope="module")
def d() -> Iterator[Daemon]:
    root = Path(tempfile.mkdtemp(prefix="fle-", dir="/tmp"))
    daemon = Daemon(root / "home", "--kill-grace", "0.5s", "--stop-grace", "2s")
    daemon.env["FLEETD_SECRET_STORE"] = "file"
    daemon.start()
    yield daemon
    daemon.stop()
    shutil.rmtree(root, ignore_errors=True)


def test_a_re_added_loop_never_inherits_the_old_ones_running_run(d: Daemon, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    d.cli("loop", "add", "again", "--every", "1h", "--command", f"while [ ! -e {gate} ]; do sleep 0.05; done")
    old = d.json("loop", "run", "again")
    d.cli("loop", "rm", "again", "--force")  # stops the old run: it ends `cancelled`, its row stays
    d.cli("loop", "add", "again", "--every", "1h", "--command", "echo new")
    shown = d.json("loop", "show", "again")
    assert shown["running_run_id"] is None and shown["last_run"] is None  # not the old loop's run
    listed = next(lp for lp in d.json("loop", "list") if lp["name"] == "again")
    assert listed["running_run_id"] is None and listed["last_run"] is None
    assert "running" not in d.cli("loop", "list").stdout.split("again", 1)[1].splitlines()[0]
    new = d.json("loop", "run", "again")  # not `skipped: previous run … still running`
    assert new["status"] == "running"
    assert d.wait_run(new["id"])["status"] == "succeeded"
    assert d.json("loop", "show", "again")["last_run"]["id"] == new["id"]
    assert d.wait_run(old["id"])["status"] == "cancelled"
    assert [r["id"] for r in d.json("runs", "list", "--loop", "again")] == [new["id"], old["id"]]  # the name's history
    wait_until(lambda: d.json("daemon", "status")["running_runs"] == 0, what="no run in flight")


def _show(d: Daemon, name: str) -> dict:
    return d.json("loop", "show", name)  # type: ignore[no-any-return]


def test_edit_changes_a_loop_in_place_and_recomputes_the_next_fire_only_for_a_new_schedule(
    d: Daemon, tmp_path: Path
) -> None:
    d.cli("loop", "add", "tidy", "--every", "1h", "--command", "echo one", "--dir", str(tmp_path),
          "--timeout", "5m", "--env", "A=1", "--catch-up", "skip")  # fmt: skip
    before = _show(d, "tidy")
    created = datetime.fromisoformat(before["created_at"])
    assert datetime.fromisoformat(before["next_fire_at"]) == created + timedelta(hours=1)

    out = d.cli("loop", "edit", "tidy", "--every", "2h")
    assert out.stdout.startswith("edited loop tidy; next run ")
    after = _show(d, "tidy")
    assert after["schedule"]["expr"] == "2h"
    # Still counted from its creation: the grid of an interval loop survives an edit.
    assert datetime.fromisoformat(after["next_fire_at"]) == created + timedelta(hours=2)
    # Paused, it says so as `loop add --paused` does (it said "next run -").
    assert d.cli("loop", "edit", "tidy", "--paused").stdout == "edited loop tidy; paused (no next run)\n"
    d.cli("loop", "edit", "tidy", "--enabled")
    # What was not given stays, add's defaults are not applied (catch-up stays skip, output cap stays).
    assert {k: after[k] for k in ("command", "dir", "timeout_s", "env", "catch_up", "output_cap_bytes")} == {
        "command": "echo one", "dir": str(tmp_path), "timeout_s": 300.0, "env": {"A": "1"}, "catch_up": "skip",
        "output_cap_bytes": 10 * 1024 * 1024,
    }  # fmt: skip
    assert after["created_at"] == before["created_at"] and after["updated_at"] != before["updated_at"]

    d.cli("loop", "edit", "tidy", "--command", "echo two", "--env", "B=2", "--env", "C=3")
    edited = _show(d, "tidy")
    assert edited["command"] == "echo two" and edited["env"] == {"B": "2", "C": "3"}  # --env replaces the set
    assert edited["next_fire_at"] == after["next_fire_at"]  # no new schedule: the next fire stays

    d.cli("loop", "edit", "tidy", "--clear-dir", "--clear-timeout", "--clear-env")
    cleared = _show(d, "tidy")
    assert (cleared["dir"], cleared["timeout_s"], cleared["env"]) == (None, None, {})

    d.cli("loop", "pause", "tidy")
    d.cli("loop", "edit", "tidy", "--cron", "0 3 * * *")
    paused = _show(d, "tidy")
    assert paused["enabled"] is False and paused["next_fire_at"] is None  # paused stays paused
    assert paused["schedule"]["kind"] == "cron" and paused["schedule"]["expr"] == "0 3 * * *"
    d.cli("loop", "edit", "tidy", "--enabled")
    resumed = _show(d, "tidy")
    assert resumed["enabled"] is True and resumed["next_fire_at"] is not None
    d.cli("loop", "edit", "tidy", "--paused")
    assert _show(d, "tidy")["enabled"] is False


def test_resume_refuses_a_one_shot_in_the_past_as_edit_enabled_does(d: Daemon) -> None:
    # `loop edit --enabled` refused it ("is in the past") where `loop resume` enabled a loop that could never fire.
    d.cli("loop", "add", "pastshot", "--at", "2020-01-01T00:00", "--command", "true", "--paused")
    edited = d.cli("loop", "edit", "pastshot", "--enabled", check=False)
    assert edited.returncode == 2 and "--at 2020-01-01T00:00 is in the past" in edited.stderr, edited
    resumed = d.cli("loop", "resume", "pastshot", check=False)
    assert resumed.returncode == 1, resumed
    assert resumed.stderr.strip() == ("fleetd: loop pastshot cannot resume: --at 2020-01-01T00:00 is in the past (give "
                                      "it a new one: `fleetd loop edit pastshot --at TIME --enabled`)")  # fmt: skip
    assert _show(d, "pastshot")["enabled"] is False  # nothing changed


def test_clear_tz_puts_a_loop_back_on_the_daemons_zone(d: Daemon) -> None:
    # There was no --clear-tz (the README promises a --clear-OPTION for each optional one): once edited to another
    # zone, a loop could not go back to the one loops take by default.
    added = d.json("loop", "add", "zoned", "--cron", "0 9 * * *", "--command", "true")
    home = added["schedule"]["timezone"]
    assert d.json("loop", "edit", "zoned", "--tz", "Asia/Tokyo")["schedule"]["timezone"] == "Asia/Tokyo"
    back = d.json("loop", "edit", "zoned", "--clear-tz")
    assert back["schedule"]["timezone"] == home and back["next_fire_at"] == added["next_fire_at"]


def test_edit_json_is_the_loop_as_show_prints_it(d: Daemon) -> None:
    d.cli("loop", "add", "edjson", "--every", "1h", "--command", "true")
    edited = d.json("loop", "edit", "edjson", "--timeout", "10m")
    shown = _show(d, "edjson")
    assert edited == {**shown, "warnings": []}  # not_firing too; and what it warns about, like `loop add`
    assert set(edited) >= LOOP_KEYS and edited["timeout_s"] == 600.0


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        (["--every", "0s"], 2, "invalid --every"),
        (["--cron", "61 * * * *"], 2, "invalid cron expression"),
        (["--at", "2001-01-01T00:00"], 2, "is in the past"),
        (["--dir", "/nonexistent/fleetd-edit"], 2, "directory not found"),
        (["--timeout", "abc"], 2, "invalid --timeout"),
        (["--env", "NOEQUALS"], 2, "invalid --env"),
        (["--clear-command"], 2, "needs --command"),
        (["--command", "x", "--clear-command"], 2, "give --command or --clear-command, not both"),
        (
            ["--backend", "codex", "--prompt", "x", "--clear-command"],
            1,
            "no codex profile: add one with `fleetd profile add NAME",
        ),
        # A command loop moved to an agent: the message now says how to drop the command it has.
        (["--backend", "openai_compat", "--prompt", "x"], 2, "the loop has one (`--clear-command` drops it)"),
        (["--max-cost", "2"], 2, "--max-cost needs an agent backend"),
        (["--output-cap", "lots"], 2, "invalid --output-cap"),
        ([], 2, "nothing to change"),
    ],
)
def test_a_bad_edit_is_refused_like_a_bad_add_and_changes_nothing(
    d: Daemon, args: list[str], code: int, fragment: str
) -> None:
    if "badedit" not in [lp["name"] for lp in d.json("loop", "list")]:
        d.cli("loop", "add", "badedit", "--every", "1h", "--command", "echo kept", "--timeout", "1m")
    before = _show(d, "badedit")
    result = d.cli("loop", "edit", "badedit", *args, check=False)
    assert result.returncode == code, result
    (line,) = result.stderr.strip().splitlines()
    assert fragment in line
    assert _show(d, "badedit") == before


def test_edit_of_a_missing_loop_is_not_found(d: Daemon) -> None:
    result = d.cli("loop", "edit", "ghost", "--every", "1h", check=False)
    assert result.returncode == 1 and "no loop named 'ghost'" in result.stderr


def test_a_run_in_flight_finishes_under_the_definition_it_started_with(d: Daemon, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    d.cli("loop", "add", "steady", "--every", "1h", "--env", "WHO=old",
          "--command", f'while [ ! -e {gate} ]; do sleep 0.05; done; echo "ran $WHO"')  # fmt: skip
    run = d.json("loop", "run", "steady")
    d.cli("loop", "edit", "steady", "--timeout", "1s", "--env", "WHO=new", "--command", 'echo "ran $WHO"; exit 4')
    # Past the new timeout: a run that re-read its loop would be killed now; this one started without one.
    started = datetime.fromisoformat(run["started_at"])
    wait_until(lambda: datetime.now(UTC) > started + timedelta(seconds=1.5), what="the new timeout to pass")
    assert d.json("runs", "show", str(run["id"]))["status"] == "running"
    gate.touch()
    done = d.wait_run(run["id"])
    assert done["status"] == "succeeded" and "ran old" in d.cli("runs", "logs", str(run["id"])).stdout
    second = d.wait_run(d.json("loop", "run", "steady")["id"])  # the next fire runs the new definition
    assert second["status"] == "failed" and second["exit_code"] == 4
    assert "ran new" in d.cli("runs", "logs", str(second["id"])).stdout


# -- profiles ---------------------------------------------------------------------------------------------

OLD_KEY, NEW_KEY = "sk-rotate-OLD-0123456789abcdef", "sk-rotate-NEW-fedcba9876543210"


def test_agent_loops_without_a_profile_that_can_authenticate_are_refused_with_the_fix(d: Daemon) -> None:
    refused = d.cli("loop", "add", "cc", "--every", "1h", "--backend", "claude_code", "--prompt", "x", check=False)
    assert refused.returncode == 1
    (line,) = refused.stderr.strip().splitlines()
    assert "no claude_code profile: add one with `fleetd profile add NAME --backend claude_code" in line
    assert "fleetd profile login NAME" in line

    added = d.cli("profile", "add", "ai-nokey", "--backend", "aider").stdout
    assert "no API key: add one with `fleetd profile set-key ai-nokey --api-key-stdin" in added
    assert "profile login" not in added  # Aider has no login
    assert d.json("profile", "show", "ai-nokey")["auth"] == "missing"
    refused = d.cli("loop", "add", "ai", "--every", "1h", "--backend", "aider", "--prompt", "x", check=False)
    assert refused.returncode == 1 and "no aider profile can authenticate: ai-nokey: no API key" in refused.stderr
    # A reviewer naming a backend with no profile is refused the same way.
    d.cli("profile", "add", "local-llm", "--backend", "openai_compat", "--base-url", "http://127.0.0.1:9/v1")
    refused = d.cli("loop", "add", "rv", "--every", "1h", "--backend", "openai_compat", "--prompt", "x",
                    "--review", "codex", check=False)  # fmt: skip
    assert refused.returncode == 1 and "no codex profile: add one with" in refused.stderr
    assert [lp["name"] for lp in d.json("loop", "list") if lp["name"] in ("cc", "ai", "rv")] == []

    d.cli("profile", "set-key", "ai-nokey", "--api-key-stdin", input="sk-aider-key-0123456789\n")
    d.cli("loop", "add", "ai", "--every", "1h", "--paused", "--backend", "aider", "--prompt", "x")


def test_a_local_openai_compat_profile_needs_no_key_and_a_remote_one_is_told_what_it_needs(d: Daemon) -> None:
    added = d.json("profile", "add", "ollama", "--backend", "openai_compat", "--base-url", "http://localhost:11434/v1")
    assert (added["tier"], added["auth"], added["auth_hint"]) == ("local", "none", None)
    assert "login" not in d.cli("profile", "show", "ollama").stdout.split("auth", 1)[1].splitlines()[0]
    d.cli("loop", "add", "local-chat", "--every", "1h", "--paused", "--backend", "openai_compat", "--prompt", "hi",
          "--profile", "ollama", "--model", "m")  # fmt: skip
    shown = d.json("loop", "show", "local-chat")
    assert shown["resolved"][0]["candidates"] == ["ollama"]  # usable with no key

    remote = d.cli("profile", "add", "remote", "--backend", "openai_compat", "--base-url", "https://api.example/v1")
    assert "no API key (its --base-url is not on this host): add one with `fleetd profile set-key remote" in (
        remote.stdout
    )
    login = d.cli("profile", "login", "remote", check=False)
    assert login.returncode == 1 and "has no login to run" in login.stderr and "set-key remote" in login.stderr


def test_profile_edit_changes_it_in_place_and_the_heartbeat_judges_the_new_limits(d: Daemon) -> None:
    d.cli("profile", "add", "editable", "--backend", "codex", "--limit", "1h=10req", "--model", "gpt-a",
          "--price-input", "1.5")  # fmt: skip
    before = d.json("profile", "show", "editable")
    edited = d.json("profile", "edit", "editable", "--limit", "5h=2Mtok", "--limit", "24h=100req", "--tier",
                    "metered", "--daily-cost", "3", "--default-reset", "90s")  # fmt: skip
    assert edited["limits"] == ["5h=2000000tok", "1d=100req"]  # --limit replaces every limit
    assert (edited["tier"], edited["daily_cost"], edited["default_reset_s"]) == ("metered", 3.0, 90.0)
    assert (edited["model"], edited["prices_per_mtok"]["input"]) == ("gpt-a", 1.5)  # not given: kept
    assert edited["config_dir"] == before["config_dir"] and edited == d.json("profile", "show", "editable")
    row = next(u for u in d.json("usage") if u["profile"] == "editable")
    assert sorted((w["window"], w["unit"], w["limit"]) for w in row["windows"]) == [
        ("1d", "req", 100.0), ("5h", "tok", 2_000_000.0)
    ]  # fmt: skip
    d.cli("profile", "edit", "editable", "--clear-limits", "--clear-model", "--clear-price-input")
    cleared = d.json("profile", "show", "editable")
    assert (cleared["limits"], cleared["model"], cleared["prices_per_mtok"]["input"]) == ([], None, None)
    assert next(u for u in d.json("usage") if u["profile"] == "editable")["windows"] == []


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        (["--limit", "5h=lots"], 2, "invalid --limit"),
        (["--limit", "1h=1req", "--limit", "1h=2req"], 2, "two --limit values for the same window"),
        (["--tier", "gold"], 2, "gold"),
        (["--price-output", "-1"], 2, "cannot be negative"),
        (["--default-reset", "2d"], 2, "--default-reset is at most 1d"),
        (["--daily-cost", "free"], 2, "invalid --daily-cost"),
        (["--clear-base-url"], 2, "needs --base-url"),
        (["--base-url", "ftp://x"], 2, "invalid --base-url"),
        (["--model", "m", "--clear-model"], 2, "give --model or --clear-model, not both"),
        ([], 2, "nothing to change"),
    ],
)
def test_a_bad_profile_edit_is_refused_and_changes_nothing(
    d: Daemon, args: list[str], code: int, fragment: str
) -> None:
    if "badprof" not in [p["name"] for p in d.json("profile", "list")]:
        d.cli("profile", "add", "badprof", "--backend", "openai_compat", "--base-url", "http://127.0.0.1:8/v1",
              "--limit", "1h=5req", "--model", "m")  # fmt: skip
    before = d.json("profile", "show", "badprof")
    result = d.cli("profile", "edit", "badprof", *args, check=False)
    assert result.returncode == code, result
    (line,) = result.stderr.strip().splitlines()
    assert fragment in line
    assert d.json("profile", "show", "badprof") == before


def test_set_key_rotates_the_key_and_output_is_scrubbed_of_the_old_and_the_new(d: Daemon, tmp_path: Path) -> None:
    d.cli("profile", "add", "rot", "--backend", "aider", "--api-key-stdin", input=OLD_KEY + "\n")
    printed = tmp_path / "keys.txt"
    printed.write_text(f"old={OLD_KEY} new={NEW_KEY}\n")
    d.cli("loop", "add", "leak", "--every", "1h", "--paused", "--command", f"cat {printed}")
    first = d.wait_run(d.json("loop", "run", "leak")["id"])
    assert f"old=[REDACTED] new={NEW_KEY}" in d.cli("runs", "logs", str(first["id"])).stdout

    rotated = json.loads(d.cli("profile", "set-key", "rot", "--api-key-stdin", "--json", input=NEW_KEY + "\n").stdout)
    assert rotated["has_api_key"] is True and NEW_KEY not in json.dumps(rotated)
    assert set(rotated) == PROFILE  # the contract: the profile, as `profile show --json` has it
    secrets = json.loads((d.home / "secrets.json").read_text())
    assert secrets["rot"] == NEW_KEY and OLD_KEY not in json.dumps(secrets)
    second = d.wait_run(d.json("loop", "run", "leak")["id"])
    assert "old=[REDACTED] new=[REDACTED]" in d.cli("runs", "logs", str(second["id"])).stdout

    refused = d.cli("profile", "set-key", "rot", check=False)  # the key only ever comes on stdin
    assert refused.returncode == 2 and "--api-key-stdin" in refused.stderr
    empty = d.cli("profile", "set-key", "rot", "--api-key-stdin", input="\n", check=False)
    assert empty.returncode == 2 and "empty" in empty.stderr
    assert json.loads((d.home / "secrets.json").read_text())["rot"] == NEW_KEY
    missing = d.cli("profile", "set-key", "ghost", "--api-key-stdin", input=NEW_KEY + "\n", check=False)
    assert missing.returncode == 1 and "no profile named 'ghost'" in missing.stderr


def test_an_api_key_that_no_http_header_can_carry_is_refused_and_nothing_is_saved(d: Daemon) -> None:
    """A key with a character outside printable ASCII (pasted from a document: a curly quote, a non-breaking
    space) was saved; each attempt of an openai_compat profile then died in httpx before any request, leaving
    its attempt `running` for ever."""
    for key in ("sk-abcd\u00e9-0123456789", "sk-0123\u00a0456789", "sk-0123\x07456789"):
        added = d.cli("profile", "add", "odd-key", "--backend", "openai_compat", "--base-url",
                           "http://127.0.0.1:9/v1", "--api-key-stdin", input=key + "\n", check=False)  # fmt: skip
        assert added.returncode == 2, added
        assert added.stderr == (
            "fleetd: the API key on stdin has a character that is not printable ASCII (character 8)\n"
        )
        assert "odd-key" not in {p["name"] for p in d.json("profile", "list")}
    d.cli("profile", "add", "odd-key", "--backend", "openai_compat", "--base-url", "http://127.0.0.1:9/v1",
               "--api-key-stdin", input="sk-good-0123456789\n")  # fmt: skip
    refused = d.cli("profile", "set-key", "odd-key", "--api-key-stdin", input="sk-caf\u00e9-0123\n", check=False)
    assert refused.returncode == 2 and "not printable ASCII" in refused.stderr
    status, answer = _request(d, "PUT", "/v1/profiles/odd-key/key", json.dumps({"api_key": 12}).encode())
    assert status == 400 and answer["error"]["message"] == "the API key must be a string", answer
    assert json.loads((d.home / "secrets.json").read_text())["odd-key"] == "sk-good-0123456789"


def test_an_attempt_that_fleetd_itself_fails_to_make_ends_and_so_does_its_run(d: Daemon) -> None:
    """An exception inside an attempt (here httpx refusing a key that an older fleetd saved) failed the run but
    left its attempt `running`, with no end, for ever."""
    if "odd-key" not in {p["name"] for p in d.json("profile", "list")}:
        d.cli("profile", "add", "odd-key", "--backend", "openai_compat", "--base-url", "http://127.0.0.1:9/v1",
              "--api-key-stdin", input="sk-good-0123456789\n")  # fmt: skip
    secrets = d.home / "secrets.json"
    secrets.write_text(json.dumps({**json.loads(secrets.read_text()), "odd-key": "sk-caf\u00e9-0123456789"}))
    d.cli("loop", "add", "odd-run", "--every", "1h", "--paused", "--backend", "openai_compat", "--profile", "odd-key",
          "--prompt", "hi", "--model", "m")  # fmt: skip
    run = d.wait_run(d.json("loop", "run", "odd-run")["id"])
    (attempt,) = run["attempt_list"]
    assert run["status"] == "failed" and attempt["finished_at"] is not None and attempt["outcome"] == "failed", run
    assert run["error"].startswith("unknown: fleetd could not run it: UnicodeEncodeError"), run["error"]
    assert run["error"] == f"unknown: {attempt['error']}"


def test_a_key_gone_from_the_secret_store_fails_its_attempt_as_auth_and_shows_missing(d: Daemon) -> None:
    """A profile whose key went missing (a new keyring, a secrets file restored from before it) ran its attempts
    with no key at all, and `profile list` still said AUTH key."""
    d.cli("profile", "add", "gone-key", "--backend", "openai_compat", "--base-url", "http://127.0.0.1:9/v1",
          "--api-key-stdin", input="sk-gone-0123456789\n")  # fmt: skip
    secrets = d.home / "secrets.json"
    secrets.write_text(json.dumps({k: v for k, v in json.loads(secrets.read_text()).items() if k != "gone-key"}))
    shown = d.json("profile", "show", "gone-key")
    assert (shown["auth"], shown["has_api_key"]) == ("missing", True), shown
    assert "fleetd profile set-key gone-key --api-key-stdin" in shown["auth_hint"], shown
    d.cli("loop", "add", "gone-run", "--every", "1h", "--paused", "--backend", "openai_compat", "--profile",
          "gone-key", "--prompt", "hi", "--model", "m")  # fmt: skip
    run = d.wait_run(d.json("loop", "run", "gone-run")["id"])
    (attempt,) = run["attempt_list"]
    assert attempt["error_class"] == "auth", attempt
    assert attempt["error"] == (
        f"auth: profile gone-key's API key is not in the secret store (file {secrets}): "
        "fleetd profile set-key gone-key --api-key-stdin, then fleetd profile enable gone-key"
    )
    (row,) = [row for row in d.json("usage") if row["profile"] == "gone-key"]
    assert row["state"] == "disabled" and "API key is not in the secret store" in row["reason"], row


def test_a_key_on_a_subscription_profile_is_said_to_be_billed(d: Daemon) -> None:
    """A key given to a subscription login's profile wins over the login (with -p), so its runs are billed per
    token while it stays in the subscription tier that loops allow by default: nothing said so."""
    d.cli("profile", "add", "sub-keyed", "--backend", "claude_code")
    warning = (
        "fleetd: warning: profile sub-keyed is tier subscription but runs with its API key, billed per token (a key "
        "wins over the login): `fleetd profile edit sub-keyed --tier metered`\n"
    )
    stored = d.cli("profile", "set-key", "sub-keyed", "--api-key-stdin", input="sk-ant-api03-billed-0123456789\n")
    assert stored.stdout == "stored a new API key for profile sub-keyed\n" and stored.stderr == warning
    added = d.cli("profile", "add", "sub-keyed2", "--backend", "claude_code", "--tier", "subscription",
                  "--api-key-stdin", input="sk-ant-api03-billed-9876543210\n")  # fmt: skip
    assert added.stderr == warning.replace("sub-keyed", "sub-keyed2")
    quiet = d.cli("profile", "add", "metered-keyed", "--backend", "claude_code", "--api-key-stdin",
                  input="sk-ant-api03-billed-5555555555\n")  # fmt: skip
    assert quiet.stderr == ""
