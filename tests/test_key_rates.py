"""Hot partition keys learnt from throttles, each with a rate of its own (key_rates.py)."""

from __future__ import annotations

import pytest

from ddbpipe.key_rates import BETA, COOLDOWN, GROWTH, HOT_AFTER, RECOVER, KeyRates
from ddbpipe.retry import ManualClock


def test_a_key_throttled_again_and_again_gets_the_rate_it_was_accepted_at() -> None:
    clock = ManualClock()
    rates = KeyRates(clock=clock)
    clock.advance(1.0)  # a window of history: 60 units of "hot" accepted over it
    assert rates.reply([("hot", 60.0), ("cold", 1.0)], []) is False
    clock.advance(0.5)
    assert rates.rate("hot", clock.monotonic()) is None
    for _ in range(HOT_AFTER - 1):
        assert rates.reply([], ["hot"]) is True  # not hot yet: the table's throttle
    assert rates.reply([], ["hot"]) is False  # hot now: its own rate answers it
    # 60 units over this window and the one before it (1.5 s).
    assert rates.rate("hot", clock.monotonic()) == pytest.approx(60 / 1.5)
    assert rates.rate("cold", clock.monotonic()) is None


def test_a_hot_keys_rate_is_cut_recovers_and_then_probes_upwards() -> None:
    clock = ManualClock()
    rates = KeyRates(clock=clock)
    for _ in range(HOT_AFTER):
        rates.reply([], ["hot"])
    start = rates.rate("hot", clock.monotonic())
    assert start == 1.0  # nothing accepted: the floor
    rates.hot["hot"].before_cut = rates.hot["hot"].after_cut = 100.0  # say it ran at 100
    clock.advance(COOLDOWN)
    assert rates.reply([], ["hot"]) is False  # cut: 100 -> 80
    assert rates.rate("hot", clock.monotonic()) == pytest.approx(BETA * 100)
    assert rates.reply([], ["hot"]) is False  # within the cooldown: no second cut
    assert rates.rate("hot", clock.monotonic()) == pytest.approx(BETA * 100)
    clock.advance(RECOVER)
    assert rates.rate("hot", clock.monotonic()) == pytest.approx(100)
    clock.advance(1.0)
    assert rates.rate("hot", clock.monotonic()) == pytest.approx(100 * 2.718281828 ** GROWTH)


def test_a_cut_never_goes_below_what_the_key_was_just_accepted_at() -> None:
    clock = ManualClock()
    rates = KeyRates(clock=clock)
    for _ in range(HOT_AFTER):
        rates.reply([], ["hot"])
    clock.advance(1.0)
    rates.reply([("hot", 95.0)], [])  # accepted at about 95/s meanwhile
    value = rates.hot["hot"]
    value.before_cut = value.after_cut = 100.0  # running at 100 now
    value.cut_at = clock.monotonic() - RECOVER
    rates.reply([], ["hot"])
    # A cut to 80 would starve it below the 95 it just got through.
    assert rates.rate("hot", clock.monotonic()) == pytest.approx(95.0, rel=0.01)


def test_a_reply_is_the_tables_throttle_when_a_key_that_is_not_hot_was_throttled() -> None:
    clock = ManualClock()
    rates = KeyRates(clock=clock)
    for _ in range(HOT_AFTER):
        rates.reply([], ["hot"])
    assert rates.reply([("cold-1", 1.0)], ["hot", "hot"]) is False
    assert rates.reply([("hot", 1.0)], ["hot", "cold-2"]) is True
