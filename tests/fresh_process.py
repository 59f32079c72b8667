"""Run a program in a fresh interpreter (nothing imported yet) and read what it printed."""

from __future__ import annotations

import subprocess
import sys


def printed_lines(program: str, timeout_s: float = 60) -> list[str]:
    """The lines `program` printed; its last stderr in the failure when it did not exit 0."""
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                          timeout=timeout_s)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.splitlines()
