"""The executor's flow-control credit: pure arithmetic on how long tasks hold a slot."""

from __future__ import annotations

from rota.executor.flow import CAP, WINDOW, Credit


def test_a_fixed_prefetch_is_the_credit_whatever_the_tasks() -> None:
    credit = Credit(slots=2, fixed=7)
    for _ in range(100):
        credit.ended(10.0)
    assert credit.value == 7


def test_before_any_task_ends_nothing_is_taken_beyond_the_slots() -> None:
    """Tasks of unknown length may be long: queued here they would wait while another executor idles."""
    assert Credit(slots=3).value == 0


def test_short_tasks_get_a_deep_queue_and_long_ones_none() -> None:
    short = Credit(slots=2)
    for _ in range(200):
        short.ended(0.001)
    assert short.value == round(2 * WINDOW / 0.001)
    instant = Credit(slots=1)
    instant.ended(0.0)
    assert instant.value == CAP
    slow = Credit(slots=4)
    for _ in range(5):
        slow.ended(2.0)
    assert slow.value == 0


def test_the_credit_follows_a_change_of_task_length_within_a_few_tasks() -> None:
    credit = Credit(slots=1)
    for _ in range(500):
        credit.ended(0.001)
    assert credit.value == 100
    credit.ended(30.0)  # one long task: the queue behind it must stop growing at once
    assert credit.value == 0
    for _ in range(150):
        credit.ended(0.001)
    assert credit.value > 0
