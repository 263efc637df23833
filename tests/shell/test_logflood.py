"""A flood of identical errors is logged once per interval, with a count."""
from __future__ import annotations

import logging

from helpdesk.logflood import FloodFilter


class Ticks:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_identical_errors_pass_once_then_once_per_interval_with_how_many_there_were(caplog):
    ticks = Ticks()
    flood = FloodFilter(interval=60, clock=ticks)
    log = logging.getLogger("test.flood")
    log.addFilter(flood)
    try:
        with caplog.at_level(logging.WARNING, logger="test.flood"):
            for n in range(1000):
                log.warning("refused a connection from %s", f"10.0.0.{n % 250}")
                log.warning("too many recipients from %s", "10.9.9.9")
                ticks.now += 0.01
            flood.flush()  # within the interval: nothing yet
            assert [r.getMessage() for r in caplog.records] == [
                "refused a connection from 10.0.0.0", "too many recipients from 10.9.9.9"]
            ticks.now += 60
            flood.flush()
            summaries = sorted(r.getMessage() for r in caplog.records[2:])
            assert summaries == [
                "refused a connection from 10.0.0.249 [and 999 more like this in the last 70 s]",
                "too many recipients from 10.9.9.9 [and 999 more like this in the last 70 s]"]
            ticks.now += 61
            flood.flush()  # quiet since: nothing more, and the kinds are forgotten
            log.warning("refused a connection from %s", "10.1.1.1")
            assert len(caplog.records) == 5
            assert caplog.records[-1].getMessage() == "refused a connection from 10.1.1.1"
    finally:
        log.removeFilter(flood)
