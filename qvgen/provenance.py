"""Where a measured figure comes from: the commit it was measured at."""

from __future__ import annotations

import subprocess


def git_commit() -> str:
    """Short hash of HEAD, or ``unknown`` outside a git checkout (e.g. on a device machine)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip()
