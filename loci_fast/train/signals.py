"""SIGTERM/SIGINT become a stop request that the loop honours between steps.

Launchers (deepspeed, torchrun) and schedulers (Slurm) signal the whole process group, DataLoader
workers included. Our loaders' workers ignore the two signals (``loci_fast.data.loaders``), so they
keep serving batches until the main process has saved and shuts them down; the main process also
stops listening for worker deaths once a stop is requested, because torch's SIGCHLD handler would
otherwise raise in the middle of the checkpoint.
"""
from __future__ import annotations

import signal
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopFlag:
    """Set by SIGTERM/SIGINT; a second SIGINT raises KeyboardInterrupt at once."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def install(self) -> None:
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C means now
        self.signal = signum
        # Workers that die now (killed with the group) must not abort the save.
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
