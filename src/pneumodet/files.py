"""Atomic, durable file writes: a reader sees the old file or the new one, never half of one, even after
a crash or a power cut (the data is on disk before the rename that makes it visible). A write the file system
refuses (full, over quota, read-only) is an :class:`OutputError`: one line naming the path and the space left."""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pneumodet.errors import UserError


def fsync_path(path: str | Path) -> None:
    """Flush a file's (or a folder's entries') data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write; rename it onto ``path`` on success.

    The temporary name is hidden and ends in ``.tmp-PID``, never in the real suffix, so a glob for
    ``*.dcm`` or ``*.png`` cannot pick up a file that is still being written. ``durable`` fsyncs the
    file before the rename and the folder after it (bulk writes of many small files may skip it).

    If the block raises, the temporary file is removed and ``path`` is left as it was; a full, over-quota or
    read-only file system becomes an :class:`OutputError` naming ``path``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise output_error(path, exc) from None
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        if durable:
            fsync_path(tmp)
        tmp.replace(path)
        if durable:
            fsync_path(path.parent)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno in FULL_ERRNOS:
            raise output_error(path, exc) from None
        raise


def sha256_of(path: str | Path) -> str:
    """Return the SHA-256 of a file, in hex."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def checkpoint_identity(checkpoint: str | Path) -> dict:
    """Return what identifies a checkpoint file cheaply: its name, size and modification time (an export or saved
    predictions made from another file are stale)."""
    stat = Path(checkpoint).stat()
    return {"checkpoint": Path(checkpoint).name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically and durably; return the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


#: errors that mean "this output path cannot be written", which the user can fix
OUTPUT_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR,
                 errno.EISDIR, errno.EEXIST, errno.ENOENT, errno.ENAMETOOLONG, errno.ENOTEMPTY, errno.EINVAL}
#: of those, the ones a write can meet whatever the path: the file system is full, over quota or read-only
FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}


class OutputError(UserError):
    """An output that cannot be written (exit 2): the path, why, and the space left there."""


def free_space(path: str | Path) -> str | None:
    """Return the space left on the file system of ``path`` (or its nearest existing parent), e.g. '12 MB'."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        free = shutil.disk_usage(path).free
    except OSError:
        return None
    return f"{free / 2**20:.0f} MB" if free >= 2**20 else f"{free / 1024:.0f} KB"


def output_error(path: str | Path, exc: OSError) -> OutputError:
    """Return a one-line OutputError for an output path that cannot be written, with the space left there."""
    reason = exc.strerror or type(exc).__name__
    free = free_space(path)
    where = f"; {free} free there" if free is not None else ""
    fix = "free some space or choose another output path" if exc.errno in (errno.ENOSPC, errno.EDQUOT) \
        else "choose another output path"
    return OutputError(f"{path}: cannot write here ({reason}{where}); {fix}")


def check_output_dir(path: str | Path) -> Path:
    """Return ``path`` as a folder that exists and is writable (created if needed), else raise a UserError."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{path}: exists and is not a folder; choose another output folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise output_error(path, exc) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UserError(f"{path}: folder is not writable; choose another output folder")
    return path


def check_output_file(path: str | Path) -> Path:
    """Return ``path`` if a file can be written there (its folder is created), else raise a UserError."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a folder; give a file name, e.g. {path / 'submission.csv'}")
    check_output_dir(path.parent if str(path.parent) else Path("."))
    return path


#: what a process leaves while it writes: prepare's ``.tmp-NAME-PID-...`` and ``.old-NAME-PID``, and
#: :func:`atomic_path`'s ``.NAME.tmp-PID``
_PID_IN_NAME = re.compile(r"^\.(?:(?:tmp|old)-.*?-(\d+)(?:-|$)|.+\.tmp-(\d+)$)")


def pid_alive(pid: int) -> bool:
    """Return whether a process with this id exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(folder: str | Path) -> list[Path]:
    """Remove ``.tmp-*-PID-*`` / ``.old-*-PID`` / ``.*.tmp-PID`` entries in ``folder`` whose process is gone;
    return them.

    Entries of a process still running (another prepare on the same folder) are left alone.
    """
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        match = _PID_IN_NAME.match(entry.name)
        if not match or pid_alive(int(match.group(1) or match.group(2))):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed
