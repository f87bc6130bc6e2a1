"""Command-line behaviour shared by every command."""

import subprocess
import sys

import pytest


def cli(*args):
    return subprocess.run([sys.executable, "-m", "sam2_3dmed.cli", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args", [["synth"], ["synth", "Task09_Spleen", "--out", "x", "--cases", "0"],
                                  ["prepare", "somewhere"], ["no-such-command"]])
def test_usage_errors_exit_2_without_traceback(args):
    r = cli(*args)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and "Error:" in r.stderr


def test_help_lists_every_command():
    r = cli("--help")
    assert r.returncode == 0
    for cmd in ("fetch-msd", "fetch-weights", "synth", "prepare", "train", "metrics", "validate-config"):
        assert cmd in r.stdout, cmd


def test_version():
    r = cli("--version")
    assert r.returncode == 0 and r.stdout.startswith("sam2-3dmed ")
