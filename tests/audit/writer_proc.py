"""A writer process for the kill -9 test: emits events forever, acknowledging as it goes.

Prints `ACK n` once every event with sequence <= n is durable (`flush` or `record`
returned); the parent kills it at a random moment and checks the database.
"""

from __future__ import annotations

import asyncio
import sys
import time

from egressguard.audit.events import DecisionEvent
from egressguard.audit.log import AuditLog
from egressguard.audit.remote import ProcessAuditLog


def make(i: int) -> DecisionEvent:
    return DecisionEvent(time=time.time(), cluster="default", kind="http",
                         host=f"h{i % 13}.example.com", port=80,
                         verdict="deny" if i % 5 == 0 else "allow",
                         permitted=i % 5 != 0, layer="application", rule="r",
                         reason=f"event {i}", connection_id=str(i))


async def main(url: str, mode: str) -> None:
    log = ProcessAuditLog(url) if mode == "process" else AuditLog(url)
    i = 0
    while True:
        for _ in range(7):            # fire-and-forget events...
            log.emit(make(i))
            i += 1
        await log.record(make(i))     # ...then a durable one (a denial's path)
        print(f"ACK {i}", flush=True)
        i += 1


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "thread"))
