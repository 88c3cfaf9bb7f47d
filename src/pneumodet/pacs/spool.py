"""The node's spool: every received instance and every result on disk before anything is acknowledged or sent.

```
SPOOL/inbox/UID.dcm      received, fsynced before the C-STORE is answered; removed once its results are queued
SPOOL/outbox/UID.dcm     results waiting to be sent (an SR, a presentation state), fsynced before the inbox file goes
SPOOL/sent.log           one JSON line per result delivered, appended and fsynced after the peer accepted it
SPOOL/status.json        queue depths, this process's counts and last errors, rewritten after each change
```
A kill at any point loses nothing: an inbox file without results is predicted again, an outbox file not yet in
sent.log is sent again. Results carry SOP Instance UIDs derived from their source's, so a result sent again after a
kill between the peer's answer and the log line is the same instance, which a PACS stores once.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections import deque
from pathlib import Path

from pneumodet.files import atomic_path, fsync_path

UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
MAX_ERRORS = 10


def safe_uid(uid: str) -> str:
    """Return ``uid`` if it is a DICOM UID (digits and dots, at most 64 characters): what names a spool file."""
    uid = str(uid).strip()
    if not (0 < len(uid) <= 64 and UID.match(uid)):
        raise ValueError(f"not a DICOM UID: {uid[:70]!r}")
    return uid


class Spool:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.inbox, self.outbox = self.root / "inbox", self.root / "outbox"
        for folder in (self.inbox, self.outbox):
            folder.mkdir(parents=True, exist_ok=True)
        self.sent_log, self.status_path = self.root / "sent.log", self.root / "status.json"
        self.lock = threading.Lock()  # counts and errors
        self.writing = threading.Lock()  # one writer of a spool file at a time: temporary names are per process
        self.errors: deque = deque(maxlen=MAX_ERRORS)
        self.counts = {"received": 0, "predicted": 0, "sent": 0, "refused": 0, "failed": 0}

    def receive(self, sop_instance_uid: str, write) -> Path:
        """Write a received instance durably (``write(tmp_path)`` writes the file); return its inbox path."""
        path = self.inbox / f"{safe_uid(sop_instance_uid)}.dcm"
        with self.writing, atomic_path(path) as tmp:
            write(tmp)
        self.count("received")
        return path

    def queued(self) -> list[Path]:
        """Return the inbox, oldest first (what is received but not yet predicted)."""
        return _oldest_first(self.inbox)

    def depth(self) -> int:
        """Return how many instances wait in the inbox (counted by name, none opened: every C-STORE asks)."""
        return _count(self.inbox)

    def results_done(self, source: Path, results: list[tuple[str, bytes]]) -> list[Path]:
        """Queue ``results`` ((UID, DICOM bytes)) for sending, durably, then drop their source from the inbox."""
        paths = []
        for uid, data in results:
            path = self.outbox / f"{safe_uid(uid)}.dcm"
            with self.writing, atomic_path(path) as tmp:
                Path(tmp).write_bytes(data)
            paths.append(path)
        source.unlink(missing_ok=True)
        fsync_path(self.inbox)
        self.count("predicted")
        return paths

    def pending(self) -> list[Path]:
        """Return the results not yet delivered, oldest first."""
        return _oldest_first(self.outbox)

    def delivered(self, path: Path, destination: str) -> None:
        """Record that the peer accepted ``path``, then drop it from the outbox."""
        with self.lock, open(self.sent_log, "a") as log:
            log.write(json.dumps({"uid": path.stem, "to": destination, "at": time.time()}) + "\n")
            log.flush()
            os.fsync(log.fileno())
        path.unlink(missing_ok=True)
        fsync_path(self.outbox)
        self.count("sent")

    def sent_uids(self) -> list[str]:
        """Return the UIDs sent.log records, in order (a UID twice: sent twice)."""
        if not self.sent_log.is_file():
            return []
        return [json.loads(line)["uid"] for line in self.sent_log.read_text().splitlines() if line.strip()]

    def count(self, what: str) -> None:
        with self.lock:
            self.counts[what] += 1
        self.write_status()

    def error(self, message: str) -> None:
        with self.lock:
            self.errors.append({"at": time.strftime("%Y-%m-%dT%H:%M:%S"), "error": message[:300]})
        self.write_status()

    def status(self) -> dict:
        depths = {"inbox": _count(self.inbox), "outbox": _count(self.outbox)}  # the folders, outside the lock
        with self.lock:
            return {**depths, **self.counts, "last_errors": list(self.errors)}

    def write_status(self) -> None:
        """Rewrite status.json, whole but not fsynced: a report (the queue depths are read from the folders, the
        counts and errors are this process's since it started), not a record anything is recovered from."""
        text = json.dumps(self.status(), indent=2) + "\n"
        with self.writing, atomic_path(self.status_path, durable=False) as tmp:
            tmp.write_text(text)


SPOOL_FILES = "[!.]*.dcm"  # hidden names are files being written


def _count(folder: Path) -> int:
    return sum(1 for _ in folder.glob(SPOOL_FILES))


def _oldest_first(folder: Path) -> list[Path]:
    """Return the spool files of ``folder``, oldest first; one another thread removes meanwhile is left out."""
    entries = []
    for path in folder.glob(SPOOL_FILES):
        try:
            entries.append((path.stat().st_mtime_ns, path.name, path))
        except FileNotFoundError:
            continue
    return [path for _, _, path in sorted(entries)]
