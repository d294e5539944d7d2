"""The quiet window: after a poll found nothing, polls may be skipped for a while, unless this
process added work meanwhile (also while that poll was running)."""

from __future__ import annotations

import pytest

from sentinel.quiet import QuietWindow


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_poll_that_found_nothing_quiets_the_next_ones_for_the_window() -> None:
    clock = Clock()
    quiet = QuietWindow(5.0, clock)
    assert not quiet.active  # nothing was polled yet: look
    quiet.found_nothing(quiet.poll())
    assert quiet.active
    clock.now += 4.9
    assert quiet.active
    clock.now += 0.1
    assert not quiet.active


def test_work_added_here_ends_the_window_at_once() -> None:
    clock = Clock()
    quiet = QuietWindow(5.0, clock)
    quiet.found_nothing(quiet.poll())
    quiet.touched()
    assert not quiet.active


def test_a_poll_that_raced_added_work_does_not_go_quiet() -> None:
    quiet = QuietWindow(5.0, Clock())
    poll = quiet.poll()
    quiet.touched()  # added while the poll ran: the poll may have looked before it landed
    quiet.found_nothing(poll)
    assert not quiet.active
    quiet.found_nothing(quiet.poll())  # the next empty poll does
    assert quiet.active


def test_a_clock_set_back_ends_the_window() -> None:
    clock = Clock()  # SqlOutbox's quiet window runs on its lease clock, wall time
    quiet = QuietWindow(5.0, clock)
    quiet.found_nothing(quiet.poll())
    clock.now -= 3600.0
    assert not quiet.active


def test_a_zero_window_never_goes_quiet_and_a_negative_one_is_refused() -> None:
    quiet = QuietWindow(0.0, Clock())
    quiet.found_nothing(quiet.poll())
    assert not quiet.active
    with pytest.raises(ValueError):
        QuietWindow(-1.0)
