"""Ctrl-C and SIGTERM during training: finish the step, save, and stop, instead of dying mid-step."""

from __future__ import annotations

import logging
import signal

log = logging.getLogger(__name__)


class Interrupted(Exception):
    """Training stopped on a signal after saving; the message says where and how to continue."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_status = 128 + signum  # what a shell reports for a process ended by that signal


class StopRequests:
    """While active, the first SIGINT or SIGTERM only sets `signum`; the loop checks it between steps.

    A second Ctrl-C raises KeyboardInterrupt at once, for a user who will not wait for the step to end.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: int | None = None
        self._previous = {}

    def __enter__(self) -> StopRequests:
        for signum in self.SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        log.warning("%s: stopping after this step and saving checkpoints/last.pt (Ctrl-C again to abort at once)",
                    signal.Signals(signum).name)
