"""The stop check's background all-reduce (lifecycle.StopRequest.poll / settle), in one process:
a poll reports what the previous poll started, and settle ends the one still running."""

import signal

from fusionrec.pipeline.lifecycle import StopRequest


def test_a_poll_reports_the_check_started_one_poll_earlier():
    stop = StopRequest()
    assert stop.poll() == 0  # nothing started before the first poll
    stop.received = signal.SIGTERM  # the handler's record, between two steps
    assert stop.poll() == 0  # the check this poll reads was started before the signal
    assert stop.poll() == signal.SIGTERM


def test_settle_ends_the_running_check_and_then_has_none():
    stop = StopRequest()
    stop.poll()
    stop.received = signal.SIGUSR1
    stop.poll()  # starts a check that sees the signal
    assert stop.settle() == signal.SIGUSR1
    assert stop.settle() == 0
