"""`serve --workers`: acknowledgements of durable refusals go to each worker from a thread
of that worker's own (`cli.workers.Acks`), so a worker that stops reading its socket
cannot hold up the audit writer's callback thread, and with it every other worker's
refusals. Real socket pairs, real threads."""

from __future__ import annotations

import socket
import threading
import time

from egressguard.cli.workers import Acks
from egressguard.cli.workerwire import Wire


def _pair() -> tuple[Wire, Wire]:
    ours, theirs = socket.socketpair()
    return Wire(ours), Wire(theirs)


def test_a_worker_that_stops_reading_does_not_hold_up_acknowledgements_to_the_others(
        ) -> None:
    stuck, stuck_peer = _pair()      # its worker never reads
    healthy, healthy_peer = _pair()
    stuck.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    # A big frame (a policy) fills the stuck worker's socket: its sender blocks.
    filler = threading.Thread(target=stuck.send, args=("policy", b"x" * (8 << 20)),
                              daemon=True)
    filler.start()
    time.sleep(0.1)
    to_stuck, to_healthy = Acks(stuck), Acks(healthy)
    try:
        started = time.monotonic()
        for seq in range(1, 50):     # what the writer's callback thread does
            to_stuck.post(seq)
            to_healthy.post(seq)
        assert time.monotonic() - started < 0.05
        received: list[tuple[object, ...]] = []
        deadline = time.monotonic() + 5
        while (not received or received[-1] != ("ack", 49)) and time.monotonic() < deadline:
            message = healthy_peer.receive()
            assert message is not None
            received.append(message)
        assert received[-1] == ("ack", 49)
    finally:
        to_stuck.close()
        to_healthy.close()
        for wire in (stuck, stuck_peer, healthy, healthy_peer):
            wire.close()


def test_acknowledgements_only_ever_move_forward_and_the_latest_always_arrives() -> None:
    wire, peer = _pair()
    acks = Acks(wire)
    try:
        for seq in (3, 1, 7, 7, 5, 12):   # callbacks may come late or twice
            acks.post(seq)
        seen: list[int] = []
        while not seen or seen[-1] != 12:
            message = peer.receive()
            assert message is not None and message[0] == "ack"
            seen.append(message[1])
        assert seen == sorted(set(seen))         # strictly increasing
        assert all(s in (3, 7, 12) for s in seen)
    finally:
        acks.close()
        wire.close()
        peer.close()


def test_the_sender_thread_ends_when_the_worker_is_gone() -> None:
    wire, peer = _pair()
    acks = Acks(wire)
    peer.close()
    for seq in range(1, 100):
        acks.post(seq)
    acks._thread.join(5)
    assert not acks._thread.is_alive()
    wire.close()
