"""The arithmetic of a paced wrk run (``profile_lab.py --rate``) and of the CPU split it reports."""

from __future__ import annotations

import itertools
import os
import threading
import time

import pytest

from xkslab.bench import wrk
from xkslab.bench.cpu import loop_and_threads, split_cost, thread_cpu


def test_interval_spreads_the_total_rate_over_the_threads() -> None:
    assert wrk.pace_interval_ms(300, 2) == pytest.approx(1000 * 2 / 300)
    assert wrk.pace_interval_ms(1000, 1) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        wrk.pace_interval_ms(0, 2)
    with pytest.raises(ValueError):
        wrk.pace_interval_ms(100, 0)


def test_a_thread_that_keeps_up_sends_exactly_at_its_rate() -> None:
    interval = wrk.pace_interval_ms(300, 2)
    due = None
    sent = []
    now = 0.0
    for _ in range(150):  # the server answers at once: each send happens when its wait ends
        wait, due = wrk.next_send(due, now, interval)
        now += wait
        sent.append(now)
    # 150 sends of one thread in one second: 300/s over the two threads, none early.
    assert sent[0] == 0.0
    assert sent[-1] == pytest.approx(149 * interval)
    assert all(b - a == pytest.approx(interval) for a, b in itertools.pairwise(sent))


def test_a_short_stall_is_caught_up_and_a_long_one_is_not_a_burst() -> None:
    interval = 10.0
    wait, due = wrk.next_send(None, 0.0, interval)
    assert (wait, due) == (0.0, 10.0)
    # 50 ms late (within the lag allowed): sent at once, and the schedule keeps its place.
    wait, due = wrk.next_send(due, 60.0, interval)
    assert (wait, due) == (0.0, 20.0)
    # Far behind: the schedule restarts from now rather than sending a burst to make up the time.
    wait, due = wrk.next_send(due, 20.0 + wrk.PACE_MAX_LAG_MS + 1, interval)
    assert wait == 0.0
    assert due == pytest.approx(20.0 + wrk.PACE_MAX_LAG_MS + 1 + interval)


def test_the_paced_script_carries_the_schedule() -> None:
    pool = [wrk.Request("/x", {"a": "b"}, b"{}")]
    assert "delay" not in wrk.lua_script(pool)
    paced = wrk.lua_script(pool, wrk.pace_interval_ms(300, 2))
    assert "delay = function()" in paced
    assert f"local interval = {1000 * 2 / 300!r}" in paced
    assert f"local max_lag = {wrk.PACE_MAX_LAG_MS!r}" in paced


def test_split_cost_separates_the_per_second_cost() -> None:
    # 2.4 CPU-seconds over 8 s and 2,400 requests (300/s); idle 3 % of a core = 0.24 s of the 2.4.
    cost = split_cost(2.4, 0.03, 8.0, 2400)
    assert cost.gross_us == pytest.approx(1000.0)
    assert cost.fixed_us == pytest.approx(100.0)
    assert cost.net_us == pytest.approx(900.0)
    # The same service at half the rate: the same net cost, a fixed part twice as large per request.
    half = split_cost(0.9 * 1.2 + 0.24, 0.03, 8.0, 1200)
    assert half.net_us == pytest.approx(900.0)
    assert half.fixed_us == pytest.approx(200.0)
    with pytest.raises(ValueError):
        split_cost(1.0, 0.0, 1.0, 0)


def test_thread_cpu_splits_the_main_thread_from_the_other_threads() -> None:
    """A thread that burns CPU shows in "other threads", not in the main thread's share, by the
    scheduler's runtime of this very process."""
    pid = os.getpid()
    burnt, done = threading.Event(), threading.Event()

    def burn() -> None:
        end = time.thread_time() + 0.2
        while time.thread_time() < end:
            pass
        burnt.set()
        done.wait()

    before = thread_cpu(pid)
    worker = threading.Thread(target=burn)
    worker.start()
    burnt.wait()  # the main thread sleeps meanwhile
    after = thread_cpu(pid)
    done.set()
    worker.join()
    main, others = loop_and_threads(before, after, pid)
    assert others >= 0.19
    assert main < 0.1
    assert worker.native_id in after and after[worker.native_id] >= 0.19
