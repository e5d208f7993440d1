"""One run per folder: rank 0 holds an exclusive ``flock`` on ``<out>/run.lock`` while it trains.

The kernel drops the lock when the holder dies however it dies, so a lock left by a killed run is
stale by construction: the next run takes it over and says whose it was. The file holds the
holder's host and pid so a refusal can name them.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from .errors import TrainError

LOCK = "run.lock"


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text())
        return f"pid {info['pid']} on host {info['host']} (since {info['started']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def check_free(out: Path) -> None:
    """Refuse (TrainError) when a live run holds ``out``'s lock; changes nothing."""
    path = Path(out) / LOCK
    if not path.is_file():
        return
    with open(path) as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TrainError(_busy(out, path)) from None
        fcntl.flock(fh, fcntl.LOCK_UN)


def _busy(out: Path, path: Path) -> str:
    return (f"{out} is in use by a running training run ({_holder(path)}); wait for it to end, "
            f"stop it, or choose another --out")


class RunLock:
    """The lock of one run folder, held by rank 0 until ``release`` (or the process's end)."""

    def __init__(self, out: Path) -> None:
        self.path = Path(out) / LOCK
        self.fh = None
        self.notice: str | None = None

    def acquire(self, wait: float = 5.0) -> None:
        """Take the lock or raise TrainError naming its holder. Waits up to ``wait`` s for ranks
        of this same run that are still probing it (``check_free``)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    fh.close()
                    raise TrainError(_busy(self.path.parent, self.path)) from None
                time.sleep(0.05)
        fh.seek(0)
        previous = fh.read().strip()
        if previous:
            self.notice = (f"taking over the lock of {self.path.parent} left by a run that ended "
                           f"without releasing it ({_holder(self.path)})")
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                             "started": time.strftime("%Y-%m-%d %H:%M:%S")}))
        fh.flush()
        self.fh = fh

    def release(self) -> None:
        if self.fh is None:
            return
        self.fh.seek(0)
        self.fh.truncate()
        self.fh.flush()
        fcntl.flock(self.fh, fcntl.LOCK_UN)
        self.fh.close()
        self.fh = None
