"""`/dashboard/live`: new decisions stream as server-sent events, shaped for the caller's
role, and every stream is bounded (clients, backlog, heartbeat, lifetime)."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest

from egressguard.web import live
from tests.web.conftest import Env, event

pytestmark = pytest.mark.timeout(60)

FAST = live.Limits(poll=0.05, heartbeat=0.2, lifetime=1.0, batch=100)
SHORT = live.Limits(poll=0.05, heartbeat=0.1, lifetime=0.35, batch=100)  # replay, then end
LIVE = live.Limits(poll=0.05, heartbeat=0.2, lifetime=3.0, batch=100)  # waits for a record


def frames(text: str) -> list[dict[str, Any]]:
    """The stream as a list of {"event", "data", "id"} (comments as {"comment"})."""
    out: list[dict[str, Any]] = []
    for block in text.split("\n\n"):
        item: dict[str, Any] = {}
        for line in block.splitlines():
            name, _, value = line.partition(": ") if ": " in line else (line, "", "")
            if line.startswith(":"):
                item["comment"] = line[1:].strip()
            elif name == "data":
                item["data"] = json.loads(value)
            elif name in ("event", "id"):
                item[name] = value
        if item and "retry" not in block.split(":")[0]:
            out.append(item)
    return out


def stream(env: Env, role: str, limits: live.Limits = FAST, **kw: Any) -> Any:
    env.client.app.state.dashboard_live_limits = limits  # type: ignore[attr-defined]
    return env.client.get("/dashboard/live", headers={**env.headers(role),
                                                      **kw.pop("headers", {})}, **kw)


def decisions(text: str) -> list[dict[str, Any]]:
    return [f["data"] for f in frames(text) if f.get("event") == "decision"]


def emit_once_streaming(env: Env, *records: dict[str, Any]) -> threading.Thread:
    """Write `records` once a live stream has opened: when it holds its slot (taken just
    before it reads where to start) and 0.3 s more, so a slow open on a busy machine
    cannot make the records older than the stream."""
    slots = live.Slots(4)
    env.client.app.state.dashboard_live_slots = slots  # type: ignore[attr-defined]

    def write() -> None:
        deadline = time.monotonic() + 30
        while slots.open == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)
        for changes in records:
            env.log.emit(event(**changes))
            time.sleep(0.05)
        env.log.flush()

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    return thread


def test_a_denial_made_while_the_stream_is_open_arrives_live(store_env: Env) -> None:
    # The record is written after the stream has opened and must arrive within its 3 s.
    writer = emit_once_streaming(store_env, dict(
        host="late.evil.net", verdict="deny", permitted=False, layer="default",
        rule="default:deny", reason="not allowed", policy_version="7"))
    response = stream(store_env, "operator", LIVE)
    writer.join()
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    got = decisions(response.text)
    # only what happened after the stream opened: none of the fixture's records
    assert [d["host"] for d in got] == ["late.evil.net"]
    assert got[0]["outcome"] == "deny" and got[0]["kind"] == "connect"


def test_operators_see_decisions_but_not_versions_or_sealed_reasons(env: Env) -> None:
    operator = decisions(stream(env, "operator", SHORT, headers={"Last-Event-ID": "0"}).text)
    auditor = decisions(stream(env, "auditor", SHORT, headers={"Last-Event-ID": "0"}).text)
    assert len(operator) == len(auditor) == 17  # every decision of cluster default
    assert "reason" not in operator[0] and "policy_version" not in operator[0]
    assert {d["policy_version"] for d in auditor} == {"2"}
    assert any(d["reason"] == "x0.evil.net not allowed" for d in auditor)


def test_an_identity_filter_streams_only_that_identitys_decisions(env: Env) -> None:
    """The identity is sealed, so it is matched after opening; the records of others are
    skipped and the stream still moves on to the ones after them."""
    writer = emit_once_streaming(env, dict(host="a.example.com", client_identity="billing"),
                                 dict(host="b.example.com", client_identity="batch-job"),
                                 dict(host="c.example.com", client_identity="billing"))
    got = decisions(stream(env, "auditor", LIVE, params={"identity": "billing"}).text)
    writer.join()
    assert [(d["host"], d["client_identity"]) for d in got] == [
        ("a.example.com", "billing"), ("c.example.com", "billing")]
    old = decisions(stream(env, "admin", SHORT, params={"identity": "(anonymous)"},
                           headers={"Last-Event-ID": "0"}).text)
    assert len(old) == 17 and {d["client_identity"] for d in old} == {""}
    assert "client_identity" not in decisions(
        stream(env, "operator", SHORT, headers={"Last-Event-ID": "0"}).text)[0]


@pytest.mark.parametrize("role", ["viewer"])
def test_roles_without_decisions_and_strangers_get_no_stream(env: Env, role: str) -> None:
    assert stream(env, role).status_code == 403
    env.client.cookies.clear()
    assert env.client.get("/dashboard/live").status_code == 401
    env.client.cookies.set("egressguard_session", "forged", path="/dashboard")
    assert env.client.get("/dashboard/live").status_code == 401


def test_filters_apply_to_the_stream(env: Env) -> None:
    got = decisions(stream(env, "auditor", SHORT, headers={"Last-Event-ID": "0"},
                           params={"outcome": "would-deny"}).text)
    assert [d["host"] for d in got] == ["y.evil.net"]
    got = decisions(stream(env, "auditor", SHORT, headers={"Last-Event-ID": "0"},
                           params={"dest": "*.github.com"}).text)
    assert len(got) == 7
    assert stream(env, "auditor", params={"outcome": "maybe"}).status_code == 400


def test_a_client_far_behind_is_told_of_the_gap_not_replayed_the_backlog(env: Env) -> None:
    small = live.Limits(poll=0.05, heartbeat=5, lifetime=0.3, batch=3)
    got = frames(stream(env, "auditor", small, headers={"Last-Event-ID": "0"}).text)
    kinds = [f.get("event") for f in got if "event" in f]
    assert kinds[0] == "hello" and kinds[1] == "gap"
    assert not [f for f in got if f.get("event") == "decision"]  # no replay of 17
    gap = next(f for f in got if f.get("event") == "gap")
    assert gap["data"]["skipped_after"] == 0 and gap["id"] == str(gap["data"]["resume"])
    assert gap["data"]["resume"] == len(env.events)  # resumes at the newest record


def test_a_quiet_stream_sends_heartbeats_and_ends_at_its_lifetime(env: Env) -> None:
    response = stream(env, "operator", live.Limits(poll=0.05, heartbeat=0.1, lifetime=0.8))
    got = frames(response.text)
    assert decisions(response.text) == []
    assert sum(1 for f in got if f.get("comment") == "heartbeat") >= 2
    assert response.text.startswith("retry: 3000")  # the browser reconnects by itself


def test_live_views_are_capped_and_a_closed_stream_frees_its_place(env: Env) -> None:
    slots = live.Slots(1)
    env.client.app.state.dashboard_live_slots = slots  # type: ignore[attr-defined]
    assert slots.take()  # someone else holds the only place
    full = stream(env, "operator")
    assert full.status_code == 503 and full.headers["retry-after"] == "10"
    slots.give()
    assert stream(env, "operator", SHORT).status_code == 200
    assert slots.open == 0  # the ended stream gave its place back


def test_frames_cannot_be_split_by_hostile_values() -> None:
    text = live.frame("decision", {"host": "a\n\nevent: admin\ndata: x"}, 5).decode()
    assert text.count("\n\n") == 1 and text.endswith("\n\n")
    assert frames(text)[0]["data"]["host"].startswith("a\n\nevent")


@pytest.mark.parametrize("spec", ["2.3", "2.4"])  # with and without a disconnect listener
async def test_a_client_that_stops_reading_is_dropped_and_frees_its_place(spec: str) -> None:
    """Attack: open a live view and never read it. The server's send blocks once the
    socket buffers are full; the stream gives up after `send_timeout`, not never."""
    import anyio

    slots = live.Slots(1)
    assert slots.take()

    async def frames_forever() -> Any:
        while True:
            yield b"data: x\n\n"
            await anyio.sleep(0)

    sent: list[dict[str, Any]] = []

    async def stalled_send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and len(sent) > 3:
            await anyio.sleep_forever()  # the peer's window is closed

    async def receive() -> dict[str, Any]:
        await anyio.sleep_forever()
        return {}

    response = live.LiveResponse(frames_forever(), slots, send_timeout=0.5)
    with anyio.fail_after(10):
        started = anyio.current_time()
        await response({"type": "http", "asgi": {"spec_version": spec}}, receive,
                       stalled_send)
    assert 0.4 < anyio.current_time() - started < 5
    assert slots.open == 0
