"""Log a flood of identical errors once per interval, with a count.

A public listener meets floods: a thousand connections past the session limit, a
dictionary attack on recipients, a client sending garbage. Each is worth knowing
about, but not a thousand times a second (that filled half a gigabyte of log a
minute). ``FloodFilter`` is a ``logging.Filter``: records are "identical" when they
come from the same logger with the same message template (``"refused %s"``, not
the formatted text), so the details of one example survive. The first record of a
kind passes; the rest of the interval only counts; then ``flush`` (run every few
seconds by the owner) logs the last of them with how many there were.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

#: Templates remembered at most: loggers that format their own messages (f-strings)
#: make a template per message, and a flood of those must not grow this without end.
_MAX_KINDS = 1000


@dataclass
class _Window:
    start: float
    suppressed: int = 0
    last: logging.LogRecord | None = None


class FloodFilter(logging.Filter):
    def __init__(self, interval: float = 60.0, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        super().__init__()
        self.interval = interval
        self._clock = clock
        self._windows: dict[tuple[str, str], _Window] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "flood_summary", False):
            return True  # our own count, coming back through the logger
        key = (record.name, str(record.msg))
        now = self._clock()
        window = self._windows.get(key)
        if window is not None and now - window.start < self.interval:
            window.suppressed += 1
            window.last = record
            return False
        if len(self._windows) >= _MAX_KINDS:
            self.flush()
        self._windows[key] = _Window(start=now)
        return True

    def flush(self, everything: bool = False) -> None:
        """Log the count of every kind whose interval is over (``everything``: of every
        kind, as when the listener stops) and that was held back; forget the kinds
        that went quiet."""
        now = self._clock()
        for key, window in list(self._windows.items()):
            if now - window.start < self.interval and not everything:
                continue
            if window.last is None:
                del self._windows[key]
                continue
            record = logging.makeLogRecord(window.last.__dict__)
            record.msg = (f"{record.msg} [and {window.suppressed} more like this in the last "
                          f"{now - window.start:.0f} s]")
            record.flood_summary = True
            self._windows[key] = _Window(start=now)
            logging.getLogger(record.name).handle(record)
