"""The daemon's flags: each one the README names exists, and reads as documented."""

from __future__ import annotations

import re
from pathlib import Path

from click.testing import CliRunner

from fleetd.cli.main import cli
from fleetd.daemon.options import DaemonOptions, flags

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_daemon_flag_the_readme_names_is_one_daemon_run_takes() -> None:
    # The README told of `--misfire-grace`, which `daemon run` refused as no such option.
    named = set(re.findall(r"`(--[a-z-]+grace|--[a-z-]+interval)", README.read_text()))
    assert "--misfire-grace" in named
    assert named <= {flag.option for flag in flags()}
    help_text = CliRunner().invoke(cli, ["daemon", "run", "--help"]).output
    assert "--misfire-grace" in help_text


def test_misfire_grace_reads_as_a_duration() -> None:
    assert DaemonOptions.from_flags({"misfire_grace": "10s"}).misfire_grace == 10.0
    assert DaemonOptions().misfire_grace == 60.0
