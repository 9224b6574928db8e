"""Envelope sealing cost per record: `.venv/bin/python bench/envelope.py`.

Compares today's audit sealing (one AES-GCM key from the audit key file, `Sealer.encrypt`
inline) with envelope sealing as the batch sealer does it (`EnvelopeSealer.batch`): one
`writer_key(records=n)` per batch of `--batch` records (a cached data key wrapped by an
RSA-2048 key in the built-in vault on SQLite), then `DataKey.encrypt` inline. Also
reports the one-off cost of minting a data key (wrap) and of opening a stored one
(unwrap, uncached). Process CPU time; the last line is one JSON object.

The writer rows measure the wired audit log itself (`AuditLog.write_raws`: bounds,
canonical values, AES-GCM, chain MAC, SQL insert and commit on SQLite) per record, with
the local audit key and with the cluster's envelope, over batches of `--write-batch`
realistic decision records: the CPU an audited request costs the writer.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

from egressguard.audit.crypto import EnvelopeSealer, Sealer
from egressguard.audit.events import DecisionEvent
from egressguard.audit.log import AuditLog, raws_of
from egressguard.keys.envelope import Envelope
from egressguard.keys.vault import KeyVault


def _cpu(fn: object, n: int) -> float:
    start = time.process_time()
    fn()  # type: ignore[operator]
    return (time.process_time() - start) / n * 1e9


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--write-records", type=int, default=20_000)
    parser.add_argument("--write-batch", type=int, default=200)
    args = parser.parse_args()
    payload, aad = b"0" + b"10.0.0.7\0alice\0GET\0/a/b?c=d\0allowed by rule r1", b"x" * 120
    nonces = [os.urandom(12) for _ in range(args.records)]
    with tempfile.TemporaryDirectory() as tmp:
        vault = KeyVault(f"sqlite:///{tmp}/store.db", "bench", master_key=os.urandom(32))
        vault.grant("gw", "get,wrapKey,unwrapKey")
        vault.create_key("audit", "RSA", 2048)
        env = Envelope(vault.client("gw"), "audit",
                       records_per_data_key=args.records * args.rounds * 4)
        env.check()  # no checker thread: its CPU would be counted in the rounds
        sealer = Sealer(os.urandom(32))

        def today() -> None:  # the same batch loop, the one key
            encrypt = sealer.encrypt
            for i in range(0, len(nonces), args.batch):
                for nonce in nonces[i:i + args.batch]:
                    encrypt(nonce, payload, aad)

        batches = EnvelopeSealer(env)

        def envelope() -> None:  # the audit batch sealer's path: header once per batch
            for i in range(0, len(nonces), args.batch):
                chunk = nonces[i:i + args.batch]
                _header, encrypt = batches.batch(len(chunk))
                for nonce in chunk:
                    encrypt(nonce, payload, aad)

        rows: dict[str, list[float]] = {"today_ns": [], "envelope_ns": []}
        for r in range(args.rounds):
            order = [("today_ns", today), ("envelope_ns", envelope)]
            for name, fn in order if r % 2 == 0 else order[::-1]:
                rows[name].append(_cpu(fn, args.records))
        wrap = _cpu(lambda: [env.provider.wrap_key("audit", os.urandom(32))
                             for _ in range(50)], 50)
        blob = env.seal(b"x")
        fresh = Envelope(vault.client("gw"), "audit").start()
        unwrap = _cpu(lambda: [fresh._cache.clear() or fresh.open(blob)  # type: ignore[func-returns-value]
                               for _ in range(20)], 20)
        writer = _writer_rows(tmp, env, args)
        env.stop()
        fresh.stop()
        vault.close()
    today_ns = statistics.median(rows["today_ns"])
    env_ns = statistics.median(rows["envelope_ns"])
    print(json.dumps({"records": args.records, "batch": args.batch,
                      "today_ns_per_record": round(today_ns), "envelope_ns_per_record":
                      round(env_ns), "ratio": round(env_ns / today_ns, 3),
                      "wrap_us": round(wrap / 1e3), "unwrap_uncached_us": round(unwrap / 1e3),
                      **writer}))


def _event(i: int) -> DecisionEvent:
    return DecisionEvent(
        time=time.time(), cluster="default", kind="connect", host=f"api{i % 50}.example.com",
        port=443, verdict="allow", permitted=True, layer="application",
        rule="application:apps/api", reason="api.example.com:443 allowed",
        policy_version="3", connection_id=f"c{i}", client_address="10.1.2.3:51234",
        client_identity="build-agent", method="CONNECT", path="")


def _writer_rows(tmp: str, env: Envelope, args: argparse.Namespace) -> dict[str, object]:
    """write_raws per record: the local audit key vs the envelope (same store file)."""
    raws = raws_of([_event(i) for i in range(args.write_batch)])
    key = os.urandom(32)
    os.environ.setdefault("EGRESSGUARD_HOME", f"{tmp}/home")
    logs = {"writer_today_ns": AuditLog(f"sqlite:///{tmp}/audit.db", key=key, start=False),
            "writer_envelope_ns": AuditLog(f"sqlite:///{tmp}/audit.db", key=key,
                                           start=False, envelope=env)}
    for log in logs.values():
        log._resume()
        log.write_raws(raws)  # warm: statements cached, data key minted
    times: dict[str, list[float]] = {name: [] for name in logs}
    n = max(1, args.write_records // args.write_batch)
    for r in range(args.rounds):
        order = list(logs.items())
        for name, log in order if r % 2 == 0 else order[::-1]:
            times[name].append(_cpu(lambda log=log: [log.write_raws(raws)  # type: ignore[misc]
                                                     for _ in range(n)], n * len(raws)))
    for log in logs.values():
        log._finish()
        log.engine.dispose()
    today = statistics.median(times["writer_today_ns"])
    wrapped = statistics.median(times["writer_envelope_ns"])
    return {"write_batch": args.write_batch, "writer_today_ns_per_record": round(today),
            "writer_envelope_ns_per_record": round(wrapped),
            "writer_ratio": round(wrapped / today, 3)}


if __name__ == "__main__":
    main()
