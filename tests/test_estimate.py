"""The time-left estimate that ``adapt`` and ``train`` print: its arithmetic and its words."""

from __future__ import annotations

import pytest

from medadapt.engine.output.progress import Estimate, duration_text, time_left


def test_the_rest_goes_at_the_pace_so_far():
    assert time_left(elapsed=30.0, done=2, left=10) == 150.0
    assert time_left(elapsed=30.0, done=0, left=10) is None  # nothing timed yet
    assert time_left(elapsed=30.0, done=3, left=0) == 0.0


def test_units_reused_from_an_earlier_run_shorten_the_work_but_not_the_pace():
    # auto's plan: the unadapted model (1 epoch), adabn (1), then two methods of 12 epochs.
    estimate = Estimate(total=1 + 1 + 12 + 12)
    assert estimate.seconds_left() is None
    assert estimate.text() == "time left not known yet"
    estimate.done(1, seconds=None)  # the unadapted run, finished by an earlier call
    assert estimate.seconds_left() is None
    estimate.done(1, seconds=4.0)  # adabn: 4 s an epoch
    assert estimate.seconds_left() == pytest.approx(24 * 4.0)
    estimate.done(12, seconds=12 * 6.0)  # 76 s over 13 timed epochs
    assert estimate.seconds_left() == pytest.approx(12 * 76.0 / 13)
    estimate.done(12, seconds=80.0)
    assert estimate.seconds_left() == 0.0


def test_a_training_epoch_counts_as_at_least_a_pass_until_one_is_timed():
    # auto: the unadapted model and AdaBN train nothing (a pass each); two methods train.
    estimate = Estimate({"epoch": 24, "pass": 2}, cheaper="pass")
    estimate.done(1, seconds=3.0, kind="pass")
    assert estimate.seconds_left() == pytest.approx(3.0 * (24 + 1))
    assert estimate.text() == "at least 1 min 20 s left"  # 75 s, and an epoch costs more
    estimate.done(1, seconds=5.0, kind="pass")
    estimate.done(12, seconds=120.0, kind="epoch")  # 10 s an epoch
    assert estimate.seconds_left() == pytest.approx(12 * 10.0)
    assert estimate.text() == "about 2 min left"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.4, "0 s"),
        (59.4, "59 s"),
        (60, "1 min"),
        (95, "1 min 40 s"),
        (299, "5 min"),
        (601, "10 min"),
        (3599, "1 h"),
        (3 * 3600 + 25 * 60 + 10, "3 h 25 min"),
    ],
)
def test_durations_read_as_estimates(seconds, text):
    assert duration_text(seconds) == text


def test_the_estimate_says_what_it_is():
    estimate = Estimate(total=12)
    estimate.done(1, seconds=40.0)
    assert estimate.text() == "about 7 min 20 s left"
