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


def test_missing_gpu_is_one_line_naming_the_host(monkeypatch):
    import socket

    import torch

    from sam2_3dmed.device import pick_device
    from sam2_3dmed.errors import UserError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    with pytest.raises(UserError) as exc:
        pick_device("cuda")
    msg = str(exc.value)
    assert "\n" not in msg and socket.gethostname() in msg and "SLURM job 4242" in msg and "run.device" in msg
    assert pick_device("auto").type == "cpu"


def test_peak_rss_is_the_kernel_high_water_mark():
    from sam2_3dmed.console import peak_rss_mb

    before = peak_rss_mb()
    block = bytearray(64 * 2 ** 20)  # touch 64 MB
    block[:: 4096] = b"x" * len(block[:: 4096])
    assert peak_rss_mb() >= before and peak_rss_mb() > 64 and peak_rss_mb(children=True) >= peak_rss_mb()
