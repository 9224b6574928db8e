"""The writer child's CPU priority (`audit.priority`): in the background (SCHED_IDLE) while
it keeps up, back to normal the moment a refusal waits for it or it falls behind, so that
a starved writer can never let events pile up. Real child processes, real scheduler."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from egressguard.audit.priority import Pacer, WriterPriority, can_return_to_normal
from egressguard.audit.remote import ProcessAuditLog
from tests.audit.conftest import event

pytestmark = pytest.mark.skipif(not WriterPriority().enabled,
                                reason="this process may not raise a SCHED_IDLE task "
                                       "back to normal priority")


def _policy(log: ProcessAuditLog) -> int:
    return os.sched_getscheduler(log._child.pid)


def _until(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.01)
    return check()


def _keep_up(log: ProcessAuditLog, until: Callable[[], bool], timeout: float = 10.0,
             ) -> bool:
    """Fire-and-forget events one by one, as a light load sends them (nobody waits:
    a flush would count as someone waiting), until `until` holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log.emit(event(connection_id="light"))
        _until(lambda: log.acknowledged == log.last_seq)
        if until():
            return True
        time.sleep(0.02)
    return until()


@pytest.fixture
def log(sqlite_url: str, audit_key: bytes) -> Iterator[ProcessAuditLog]:
    log = ProcessAuditLog(sqlite_url)
    log._priority.pacer = Pacer(late_after=0.1, calm_for=0.3)
    try:
        yield log
    finally:
        os.kill(log._child.pid, signal.SIGCONT)
        log.close()


def test_the_writer_starts_at_normal_priority_and_goes_to_the_background_once_it_keeps_up(
        log: ProcessAuditLog) -> None:
    assert _policy(log) == os.SCHED_OTHER      # nothing sent yet: nothing decided
    log.emit(event(connection_id="a"))
    log.flush(timeout=30)
    assert _policy(log) == os.SCHED_OTHER      # not calm for long enough yet
    assert _keep_up(log, lambda: _policy(log) == os.SCHED_IDLE)


def test_a_refusal_waiting_for_its_record_lifts_a_stalled_writer_to_normal_priority(
        log: ProcessAuditLog) -> None:
    assert _keep_up(log, lambda: _policy(log) == os.SCHED_IDLE)
    os.kill(log._child.pid, signal.SIGSTOP)    # as if starved of CPU
    done = threading.Event()

    def refuse() -> None:
        asyncio.run(log.record(event(connection_id="refused", verdict="deny",
                                     permitted=False), timeout=30))
        done.set()

    waiter = threading.Thread(target=refuse)
    waiter.start()
    try:
        assert _until(lambda: _policy(log) == os.SCHED_OTHER)
        assert not done.is_set()
    finally:
        os.kill(log._child.pid, signal.SIGCONT)
        waiter.join(30)
    assert done.is_set()
    assert _policy(log) == os.SCHED_OTHER      # not calm again yet
    assert _keep_up(log, lambda: _policy(log) == os.SCHED_IDLE)   # calm: background


def test_a_writer_that_falls_behind_fire_and_forget_events_is_lifted_to_normal_priority(
        log: ProcessAuditLog) -> None:
    assert _keep_up(log, lambda: _policy(log) == os.SCHED_IDLE)
    os.kill(log._child.pid, signal.SIGSTOP)
    for i in range(3):                         # nobody waits: only its lag tells
        log.emit(event(connection_id=f"e{i}"))
    assert _until(lambda: _policy(log) == os.SCHED_OTHER, timeout=5)
    os.kill(log._child.pid, signal.SIGCONT)
    log.flush(timeout=30)
    assert log.acknowledged == log.last_seq
    assert _keep_up(log, lambda: _policy(log) == os.SCHED_IDLE)


def test_without_background_the_writer_stays_at_normal_priority(
        sqlite_url: str, audit_key: bytes) -> None:
    log = ProcessAuditLog(sqlite_url, background=False)
    try:
        log.emit(event())
        log.flush(timeout=30)
        time.sleep(0.1)
        assert _policy(log) == os.SCHED_OTHER
    finally:
        log.close()


# -- the rules, without processes ------------------------------------------------------

def test_the_pacer_lets_a_writer_go_only_once_it_has_kept_up_for_a_while() -> None:
    pacer = Pacer(late_after=0.1, calm_for=2.0)
    assert pacer.keeps_up(0, None, waited_for=False, now=10.0)
    assert pacer.keeps_up(1, 9.95, waited_for=False, now=10.0)      # the frame just sent
    assert not pacer.keeps_up(1, 9.95, waited_for=True, now=10.0)   # a refusal waits
    assert not pacer.keeps_up(2, 9.99, waited_for=False, now=10.0)  # a frame behind
    assert not pacer.keeps_up(1, 9.8, waited_for=False, now=10.0)   # late to answer
    assert not pacer.background(None, now=10.0)
    assert not pacer.background(9.0, now=10.0)                      # calm for 1 s only
    assert pacer.background(8.0, now=10.0)


def test_a_writer_that_stops_keeping_up_even_briefly_must_be_calm_again_for_as_long(
        ) -> None:
    priority = WriterPriority(Pacer(late_after=0.1, calm_for=2.0), enabled=False)
    priority.enabled = True           # (the rules only: no child to change)
    for now in (0.0, 1.0, 1.9):
        priority.update(0, None, waited_for=False, now=now)
    priority.update(2, 1.9, waited_for=False, now=1.95)   # a frame behind: not calm
    priority.update(0, None, waited_for=False, now=3.0)
    assert priority._calm_since == 3.0
    assert not priority.background


def test_the_right_to_raise_priority_again_comes_from_cap_sys_nice_or_rlimit_nice() -> None:
    with_cap = "Name:\tx\nCapEff:\t0000000000800000\n"           # bit 23 only
    without = "Name:\tx\nCapEff:\t00000000a80425fb\n"            # a container's default
    assert can_return_to_normal(with_cap, 0)
    assert not can_return_to_normal(without, 0)
    assert can_return_to_normal(without, 20)                      # nice 0 allowed
    assert not can_return_to_normal(without, 19)
    assert not can_return_to_normal("garbage", 0)
