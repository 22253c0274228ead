"""The daemon's flags: each one the README names exists, and reads as documented."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from fleetd.cli.main import cli
from fleetd.daemon.options import DaemonOptions, OptionError, flags

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_daemon_flag_the_readme_names_is_one_daemon_run_takes() -> None:
    # The README told of `--misfire-grace`, which `daemon run` refused as no such option.
    text = README.read_text()
    usages = " ".join(line.split(" | ")[0] for line in text.splitlines() if line.startswith("| `fleetd daemon run "))
    named = set(re.findall(r"--[a-z-]+", usages)) | set(re.findall(r"`(--[a-z-]+(?:grace|interval))", text))
    assert {"--misfire-grace", "--stop-grace", "--gateway-public"} <= named
    assert named <= {flag.option for flag in flags()}
    help_text = CliRunner().invoke(cli, ["daemon", "run", "--help"]).output
    assert "--misfire-grace" in help_text


def test_misfire_grace_reads_as_a_duration() -> None:
    assert DaemonOptions.from_flags({"misfire_grace": "10s"}).misfire_grace == 10.0
    assert DaemonOptions().misfire_grace == 60.0
    with pytest.raises(OptionError, match=r"invalid --misfire-grace '1ms': at least 1s"):
        DaemonOptions.from_flags({"misfire_grace": "1ms"})


def test_a_tz_that_is_a_posix_rule_and_no_zone_name_is_warned_of(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # TZ="CET-1CEST,…" set the daemon's clock on the wall, and loops added without --tz silently got Etc/UTC.
    from fleetd.daemon.main import _local_zone

    monkeypatch.setenv("TZ", "CET-1CEST,M3.5.0,M10.5.0/3")
    with caplog.at_level(logging.WARNING, "fleetd.daemon"):
        name = _local_zone()
    assert f"TZ=CET-1CEST,M3.5.0,M10.5.0/3 names no time zone; loops added without --tz use {name}" in caplog.text
    caplog.clear()
    monkeypatch.setenv("TZ", ":Europe/Paris")
    assert _local_zone() == "Europe/Paris" and caplog.text == ""
    # A file is a zone too (tzlocal reads it): no warning (the review found one for TZ=:/etc/localtime).
    for path in ("/usr/share/zoneinfo/Europe/Stockholm", ":/etc/localtime"):
        monkeypatch.setenv("TZ", path)
        _local_zone()
        assert caplog.text == "", path


@pytest.mark.parametrize(
    "flags",
    [
        {"retain": "2000000s", "kill_grace": "1.23456789s"},  # `:g` wrote 2e+06s (refused) and 1.23457s
        {"retain": "off", "near_limit": "87.5%", "heartbeat_interval": "5m", "stop_grace": "0.5s"},
        {"gateway": "127.0.0.1:4141", "gateway_public": False, "misfire_grace": "90d"},
    ],
)
def test_a_daemons_options_read_back_from_their_flag_texts_are_the_same(flags: dict[str, Any]) -> None:
    """`daemon restart` starts the new daemon with the running one's `flag_texts`: they must read back exactly."""
    options = DaemonOptions.from_flags(flags)
    assert DaemonOptions.from_flags(options.flag_texts()) == options
