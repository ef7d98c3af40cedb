"""Ctrl-C and SIGTERM as a request to stop at the next step boundary."""

from __future__ import annotations

import signal
import threading


class StopSignals:
    """Turn Ctrl-C and SIGTERM into a request the loop honours at the next step
    boundary, so the checkpoint it saves is consistent. A second Ctrl-C aborts."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self._saved: dict[int, object] = {}

    @property
    def code(self) -> int:
        """The requested signal's number, 0 for none (what the processes agree on)."""
        return signal.Signals[self.requested].value if self.requested else 0

    def _handle(self, signum, frame) -> None:
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._saved[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)
