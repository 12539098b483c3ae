"""Ctrl-C and SIGTERM as requests to stop at the next step (or chunk) boundary."""

import signal
import threading


class StopRequests:
    """SIGINT/SIGTERM handlers that ask the loop to stop at the next step boundary.

    A step interrupted half-way (torch updates its weights in place) would leave a state that
    matches no step count, so the signal only sets a flag. A second signal gets the previous
    handler: Ctrl-C twice quits at once, keeping the last complete checkpoint.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum = None
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._request)
        return self

    def __exit__(self, *exc_info):
        self._restore()

    def _request(self, signum, frame):
        self.signum = signum
        self._restore()

    def _restore(self):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}
