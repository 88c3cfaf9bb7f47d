"""File systems that fail on purpose: a small tmpfs that fills up, and a read-only one. Mounting needs root (CI
runs as root); elsewhere the tests that need them are skipped."""

from __future__ import annotations

import os
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest


def _mount(*args: str) -> None:
    done = subprocess.run(["mount", *args], capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount here ({done.stderr.strip() or done.returncode})")


@contextmanager
def tmpfs(path: str | Path, size: str = "1m", read_only: bool = False):
    """Mount a tmpfs of ``size`` on ``path`` (created), read-only after whatever is in it now is copied in."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    kept = {p.name: p.read_bytes() for p in path.iterdir() if p.is_file()}
    _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path))
    try:
        for name, data in kept.items():
            (path / name).write_bytes(data)
        if read_only:
            _mount("-o", "remount,ro", str(path))
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(path: str | Path, leave_bytes: int = 0) -> None:
    """Fill the file system of folder ``path`` until at most ``leave_bytes`` are free."""
    stat = os.statvfs(path)
    free = stat.f_bavail * stat.f_frsize - leave_bytes
    with open(Path(path) / ".filler", "wb") as f:
        try:
            while free > 0:
                f.write(b"\0" * min(free, 1 << 16))
                free -= 1 << 16
            f.flush()
        except OSError:
            pass
