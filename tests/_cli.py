"""Run the ``sam2-3dmed`` command line in a subprocess, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys


def run_cli(*args, cwd=None, timeout=600, env=None):
    full_env = dict(os.environ, SAM2_3DMED_NO_PROGRESS="1", **(env or {}))
    return subprocess.run([sys.executable, "-m", "sam2_3dmed.cli", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=timeout, env=full_env)


def one_line_error(proc) -> str:
    """The single ``error: ...`` line of a failed command (asserts the contract)."""
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]
