"""Workload identities through a running gateway: Basic proxy secrets from a real store,
Bearer JWTs against a JWKS file, source CIDRs; 407 when required; revocation within a
second, also on a kept-alive connection."""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from egressguard.identity import IdentityHolder, JwtConfig
from egressguard.identity.follow import IdentityFollower
from egressguard.identity.store import IdentityStore
from egressguard.store import Store
from tests.gateway.conftest import Running, Server, connect_tunnel

SCOPED = """
restrict_outbound_network_access: Enabled
trusted_ranges: [127.0.0.0/8]
{extra}
identities:
  k8s-web: {{jwt_subjects: ["system:serviceaccount:shop:web"]}}
  k8s-batch: {{jwt_subjects: ["system:serviceaccount:shop:batch"]}}
application_rule_collections:
  - name: web-only
    priority: 100
    identities: [web, k8s-web, from-loopback]
    rules:
      - {{name: up, targets: [up.test], protocols: ["http:*"]}}
network_rule_collections:
  - name: tunnels
    priority: 200
    identities: [web]
    rules:
      - {{name: echo, destinations: [127.0.0.1/32], protocols: [TCP]}}
"""


def basic(name: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{name}:{secret}".encode()).decode()


class Client:
    """One kept-alive connection to the gateway, request after request."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=3)
        self.buf = b""

    def get(self, upstream_port: int, auth: str | None = None,
            host: str = "up.test") -> tuple[int, bytes]:
        url = f"http://{host}:{upstream_port}/"
        head = f"GET {url} HTTP/1.1\r\nHost: {host}:{upstream_port}\r\n"
        if auth:
            head += f"Proxy-Authorization: {auth}\r\n"
        self.sock.sendall((head + "\r\n").encode())
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk
        head_bytes, _, rest = self.buf.partition(b"\r\n\r\n")
        length = next(int(line.split(b":", 1)[1]) for line in head_bytes.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        while len(rest) < length:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("cut mid-response")
            rest += chunk
        self.buf = rest[length:]
        return int(head_bytes.split(b" ", 2)[1]), head_bytes + b"\r\n\r\n" + rest[:length]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    st = Store(f"sqlite:///{tmp_path / 'store.db'}")
    yield st
    st.close()


@pytest.fixture
def identities(store: Store) -> Iterator[tuple[IdentityStore, IdentityHolder]]:
    ids = IdentityStore(store)
    holder = IdentityHolder()
    follower = IdentityFollower(ids, holder, interval=0.1)
    follower.start()
    real_create = ids.create

    def create(*args: Any, **kwargs: Any) -> Any:
        made = real_create(*args, **kwargs)
        follower.poll()  # known to the holder before the test starts its gateway
        return made

    ids.create = create  # type: ignore[method-assign]
    yield ids, holder
    follower.stop()


@pytest.fixture
def issuer(tmp_path: Path) -> dict[str, Any]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    public.update(kid="k1", alg="RS256", use="sig")
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [public]}))
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    config = JwtConfig.load(path, "https://kubernetes.default.svc", "egressguard")

    def token(sub: str, *, aud: str = "egressguard", exp: float | None = None,
              kid: str = "k1", signer: Any = None) -> str:
        claims = {"iss": "https://kubernetes.default.svc", "aud": aud, "sub": sub,
                  "exp": int(exp if exp is not None else time.time() + 600)}
        return jwt.encode(claims, signer or key, algorithm="RS256", headers={"kid": kid})

    return {"config": config, "token": token, "other": other}


def start(gateway_factory: Callable[..., Running], extra: str = "", **options: Any
          ) -> Running:
    return gateway_factory(SCOPED.format(extra=extra), resolve={"up.test": "127.0.0.1"},
                           **options)


def test_two_basic_identities_one_destination_get_different_verdicts(
        gateway_factory: Callable[..., Running], upstream: Server,
        identities: tuple[IdentityStore, IdentityHolder]) -> None:
    ids, holder = identities
    web_secret, _ = ids.create("web", "test")
    batch_secret, _ = ids.create("batch", "test")
    gw = start(gateway_factory, identities=holder)
    web, batch = Client(gw.port), Client(gw.port)
    try:
        status, body = web.get(upstream.port, basic("web", web_secret or ""))
        assert status == 200, body
        status, body = batch.get(upstream.port, basic("batch", batch_secret or ""))
        assert status == 403 and b"X-Egressguard-Rule: default" in body
        # The credential never reaches the destination.
        echoed = json.loads(web.get(upstream.port, basic("web", web_secret or ""))[1]
                            .partition(b"\r\n\r\n")[2])
        assert not any(k.lower() == "proxy-authorization" for k, _ in echoed["headers"])
    finally:
        web.close()
        batch.close()
    allowed = gw.sink.wait_for(lambda e: e.verdict == "allow" and e.kind == "http")
    denied = gw.sink.wait_for(lambda e: e.verdict == "deny" and e.kind == "http")
    assert (allowed.client_identity, denied.client_identity) == ("web", "batch")


def test_unknown_name_and_wrong_secret_get_the_same_407(
        gateway_factory: Callable[..., Running], upstream: Server,
        identities: tuple[IdentityStore, IdentityHolder]) -> None:
    ids, holder = identities
    ids.create("web", "test")
    gw = start(gateway_factory, identities=holder)
    answers = []
    for credential in (basic("web", "egi_wrong"), basic("nobody", "egi_wrong"),
                       "Basic !!notbase64", "Digest x"):
        client = Client(gw.port)
        try:
            answers.append(client.get(upstream.port, credential))
        finally:
            client.close()
    assert [status for status, _ in answers] == [407] * 4
    assert answers[0][1] == answers[1][1] == answers[2][1]  # indistinguishable
    assert b'Proxy-Authenticate: Basic realm="egressguard"' in answers[0][1]


def test_no_credentials_is_407_when_the_policy_requires_an_identity(
        gateway_factory: Callable[..., Running], upstream: Server,
        identities: tuple[IdentityStore, IdentityHolder]) -> None:
    ids, holder = identities
    secret, _ = ids.create("web", "test")
    gw = start(gateway_factory, "require_identity: true", identities=holder)
    client = Client(gw.port)
    try:
        status, body = client.get(upstream.port)
        assert status == 407 and b"Proxy-Authenticate: Basic" in body
        assert b"requires a workload identity" in body
        # The same connection may then authenticate (the 407 kept it open).
        assert client.get(upstream.port, basic("web", secret or ""))[0] == 200
    finally:
        client.close()
    refusal = gw.sink.wait_for(lambda e: e.rule == "identity:required")
    assert refusal.permitted is False


def test_without_require_identity_an_anonymous_caller_gets_the_unscoped_rules(
        gateway_factory: Callable[..., Running], upstream: Server,
        identities: tuple[IdentityStore, IdentityHolder]) -> None:
    _, holder = identities
    gw = start(gateway_factory, identities=holder)
    client = Client(gw.port)
    try:
        assert client.get(upstream.port)[0] == 403  # the scoped rule is not for anyone
    finally:
        client.close()


def test_revoked_identity_is_denied_within_a_second_on_a_kept_alive_connection(
        gateway_factory: Callable[..., Running], upstream: Server,
        identities: tuple[IdentityStore, IdentityHolder]) -> None:
    ids, holder = identities
    secret, _ = ids.create("web", "test")
    gw = start(gateway_factory, identities=holder)
    client = Client(gw.port)
    credential = basic("web", secret or "")
    try:
        assert client.get(upstream.port, credential)[0] == 200
        ids.revoke("web")
        revoked_at = time.monotonic()
        while True:
            try:
                status, _ = client.get(upstream.port, credential)
            except ConnectionError:  # revoked while a request was in flight: cut
                client.close()
                client = Client(gw.port)
                status, _ = client.get(upstream.port, credential)
            if status != 200:
                break
            assert time.monotonic() - revoked_at < 1.0, "still allowed a second later"
            time.sleep(0.02)
        assert status == 407
        assert time.monotonic() - revoked_at < 1.0
    finally:
        client.close()


def test_revoked_identity_loses_its_open_tunnel(
        gateway_factory: Callable[..., Running], echo: Server,
        identities: tuple[IdentityStore, IdentityHolder]) -> None:
    ids, holder = identities
    secret, _ = ids.create("web", "test")
    gw = start(gateway_factory, identities=holder)
    sock = socket.create_connection(("127.0.0.1", gw.port), timeout=3)
    target = f"127.0.0.1:{echo.port}"
    sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: "
                 f"{basic('web', secret or '')}\r\n\r\n".encode())
    assert sock.recv(4096).startswith(b"HTTP/1.1 200")
    sock.sendall(b"ping")
    assert sock.recv(4096) == b"ping"
    ids.revoke("web")
    revoked_at = time.monotonic()
    sock.settimeout(2)
    with contextlib.suppress(ConnectionResetError):  # cut (reset) or closed
        assert sock.recv(4096) == b""
    assert time.monotonic() - revoked_at < 1.0
    sock.close()
    # Without a credential the tunnel's network rule is not for this caller.
    with pytest.raises(AssertionError):
        connect_tunnel(gw.port, target).close()


def test_bearer_jwt_subjects_map_to_identities_with_different_verdicts(
        gateway_factory: Callable[..., Running], upstream: Server,
        issuer: dict[str, Any]) -> None:
    gw = start(gateway_factory, jwt=issuer["config"])
    token = issuer["token"]
    for sub, want in (("system:serviceaccount:shop:web", 200),
                      ("system:serviceaccount:shop:batch", 403)):
        client = Client(gw.port)
        try:
            assert client.get(upstream.port, f"Bearer {token(sub)}")[0] == want
        finally:
            client.close()
    assert gw.sink.wait_for(lambda e: e.verdict == "deny").client_identity == "k8s-batch"


@pytest.mark.parametrize("case", ["expired", "wrong audience", "unknown key",
                                  "forged signature", "unmapped subject"])
def test_bad_bearer_jwt_is_refused(gateway_factory: Callable[..., Running],
                                   upstream: Server, issuer: dict[str, Any],
                                   case: str) -> None:
    token = issuer["token"]
    web = "system:serviceaccount:shop:web"
    bad = {"expired": lambda: token(web, exp=time.time() - 5),
           "wrong audience": lambda: token(web, aud="someone-else"),
           "unknown key": lambda: token(web, kid="k2", signer=issuer["other"]),
           "forged signature": lambda: token(web, signer=issuer["other"]),
           "unmapped subject": lambda: token("system:serviceaccount:x:y")}[case]()
    gw = start(gateway_factory, jwt=issuer["config"])
    client = Client(gw.port)
    try:
        status, body = client.get(upstream.port, f"Bearer {bad}")
    finally:
        client.close()
    assert status == 407
    assert b'Proxy-Authenticate: Bearer realm="egressguard"' in body


def test_bearer_token_expiring_on_a_kept_alive_connection_is_refused(
        gateway_factory: Callable[..., Running], upstream: Server,
        issuer: dict[str, Any]) -> None:
    gw = start(gateway_factory, jwt=issuer["config"])
    short = issuer["token"]("system:serviceaccount:shop:web", exp=time.time() + 1.5)
    client = Client(gw.port)
    try:
        assert client.get(upstream.port, f"Bearer {short}")[0] == 200
        time.sleep(1.6)
        assert client.get(upstream.port, f"Bearer {short}")[0] == 407
    finally:
        client.close()


def test_source_cidr_is_the_weakest_mapping(
        gateway_factory: Callable[..., Running], upstream: Server,
        identities: tuple[IdentityStore, IdentityHolder]) -> None:
    ids, holder = identities
    ids.create("batch", "test")
    extra = "require_identity: true"
    policy = SCOPED.format(extra=extra).replace(
        "identities:\n", "identities:\n  from-loopback: {sources: [127.0.0.1/32]}\n", 1)
    gw = gateway_factory(policy, resolve={"up.test": "127.0.0.1"}, identities=holder)
    client = Client(gw.port)
    try:
        assert client.get(upstream.port)[0] == 200  # no credential: the source maps
        # A bad credential never falls back to the source.
        assert client.get(upstream.port, basic("batch", "egi_wrong"))[0] == 407
    finally:
        client.close()
    assert gw.sink.wait_for(lambda e: e.verdict == "allow").client_identity == \
        "from-loopback"


def test_two_proxy_authorization_headers_are_refused(
        gateway_factory: Callable[..., Running], upstream: Server,
        identities: tuple[IdentityStore, IdentityHolder]) -> None:
    ids, holder = identities
    secret, _ = ids.create("web", "test")
    gw = start(gateway_factory, identities=holder)
    good = basic("web", secret or "")
    with socket.create_connection(("127.0.0.1", gw.port), timeout=3) as sock:
        target = f"up.test:{upstream.port}"
        sock.sendall(f"GET http://{target}/ HTTP/1.1\r\nHost: {target}\r\n"
                     f"Proxy-Authorization: {good}\r\nProxy-Authorization: {good}\r\n"
                     "Connection: close\r\n\r\n".encode())
        assert sock.recv(65536).startswith(b"HTTP/1.1 407")


def test_identity_expiring_on_a_kept_alive_connection_is_refused_from_then_on(
        gateway_factory: Callable[..., Running], upstream: Server,
        identities: tuple[IdentityStore, IdentityHolder]) -> None:
    ids, holder = identities
    secret, _ = ids.create("web", "test", lifetime=1.5)
    gw = start(gateway_factory, identities=holder)
    client = Client(gw.port)
    credential = basic("web", secret or "")
    try:
        assert client.get(upstream.port, credential)[0] == 200
        time.sleep(1.5 + 0.5)  # the gateway's sweep rebuilds the directory (0.25 s)
        assert client.get(upstream.port, credential)[0] == 407
    finally:
        client.close()


def test_another_identity_on_the_connection_never_rides_on_the_upstream_got_for_a_name_it_may_not_reach(  # noqa: E501
        gateway_factory: Callable[..., Running], upstream: Server,
        identities: tuple[IdentityStore, IdentityHolder]) -> None:
    # A connection opened for web's up.test would take batch's request for shared.test
    # to up.test's backend at an origin that routes by a connection's first request.
    ids, holder = identities
    web_secret, _ = ids.create("web", "test")
    batch_secret, _ = ids.create("batch", "test")
    shared = '  - name: everyone\n    priority: 300\n    rules:\n' \
             '      - {name: shared, targets: [shared.test], protocols: ["http:*"]}'
    policy = SCOPED.format(extra="").replace("network_rule_collections:",
                                             f"{shared}\nnetwork_rule_collections:")
    gw = gateway_factory(policy, resolve={"up.test": "127.0.0.1",
                                          "shared.test": "127.0.0.1"}, identities=holder)
    client = Client(gw.port)
    try:
        assert client.get(upstream.port, basic("web", web_secret or ""))[0] == 200
        assert client.get(upstream.port, basic("web", web_secret or ""),
                          host="shared.test")[0] == 200
        assert len(upstream.peers) == 1   # web's own requests share its connection
        assert client.get(upstream.port, basic("batch", batch_secret or ""),
                          host="shared.test")[0] == 200
        assert len(upstream.peers) == 2
        assert client.get(upstream.port, basic("batch", batch_secret or ""))[0] == 403
    finally:
        client.close()
