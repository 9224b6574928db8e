"""The shared upstream pool and the upstream's states (gateway/pool.py, gateway/upstream.py),
without sockets: an `Upstream` not yet connected has no transport to touch."""

from __future__ import annotations

import asyncio
import ipaddress

from egressguard.gateway.pool import Pool
from egressguard.gateway.upstream import UpState, Upstream

A = ipaddress.ip_address("10.0.0.1")
B = ipaddress.ip_address("10.0.0.2")
KEY = ("a.test", 80)
_LOOP = asyncio.new_event_loop()  # only `send` reads the clock, and no test sends
_LOOP.close()


def _idle(pool: Pool, ip=A, key=KEY) -> Upstream:
    up = Upstream(pool, _LOOP, 1024, ip, key)
    up.state = UpState.IDLE   # as after a reusable response (what `send` + a reply do)
    return up


def test_a_parked_connection_is_handed_out_only_for_an_address_just_decided():
    pool = Pool()
    up = _idle(pool)
    pool.park(up, now=0.0)
    assert up.state is UpState.PARKED and up.owner is pool and len(pool) == 1
    owner = Pool()  # any UpstreamOwner
    assert pool.take(KEY, (B,), owner) is None      # decided for another address
    assert up.closed and len(pool) == 0              # and never kept for later


def test_take_gives_the_connection_to_its_new_owner():
    pool, owner = Pool(), Pool()
    up = _idle(pool)
    pool.park(up, now=0.0)
    assert pool.take(("b.test", 80), (A,), owner) is None   # another host
    assert pool.take(KEY, (B, A), owner) is up
    assert up.state is UpState.IDLE and up.owner is owner and len(pool) == 0


def test_only_idle_connections_are_parked_and_at_most_per_key():
    pool = Pool(per_key=2)
    busy = _idle(pool)
    busy.state = UpState.BUSY
    pool.park(busy, now=0.0)
    assert busy.closed and len(pool) == 0
    ups = [_idle(pool) for _ in range(3)]
    for up in ups:
        pool.park(up, now=0.0)
    assert len(pool) == 2 and ups[2].closed
    tunnel = _idle(pool, key=None)
    pool.park(tunnel, now=0.0)
    assert tunnel.closed


def test_idle_connections_expire_and_a_lost_one_leaves_the_pool():
    pool = Pool(idle_seconds=30)
    old, new, lost = _idle(pool), _idle(pool), _idle(pool)
    pool.park(old, now=0.0)
    pool.park(new, now=20.0)
    pool.park(lost, now=20.0)
    lost.connection_lost(None)            # the destination closed it while parked
    assert lost.closed and len(pool) == 2
    pool.expire(now=31.0)
    assert old.closed and not new.closed and len(pool) == 1
    pool.close_all()
    assert new.closed and len(pool) == 0


def test_unsolicited_bytes_on_a_parked_connection_close_it():
    pool = Pool()
    up = _idle(pool)
    pool.park(up, now=0.0)
    up.data_received(b"HTTP/1.1 200 OK\r\n\r\n")
    assert up.closed
