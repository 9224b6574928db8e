"""The dashboard in a real browser: Debian's Chromium driven by Playwright against a real
`egressguard serve` (gateway, API, audit log, a temporary home, a local upstream).

An operator logs in with a token, sees a denial appear live while the page is open, sees
the chart drawn, proposes an allow and applies it (the same request then gets 200 through
the proxy), and logs out (the copied cookie stops working). An auditor sees the policy
version in force at each decision, and replays version 1 and a pasted candidate on the
recorded traffic before anything is applied. Screenshots go to `$EGRESSGUARD_ARTIFACTS` (default
tests/.artifacts/browser, git-ignored).

Never `playwright install`: the browser is the distribution's (`.ci/run` installs it).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    pytest.skip(f"{CHROMIUM} is absent (apt-get install chromium; .ci/run does)",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (dev extra) missing")

pytestmark = pytest.mark.timeout(180)
EGRESSGUARD = str(Path(sys.executable).parent / "egressguard")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-background-networking", "--disable-component-update", "--no-first-run",
        "--disable-sync"]
WIDTH = 1366


def artifacts() -> Path:
    found = os.environ.get("EGRESSGUARD_ARTIFACTS")
    path = Path(found) if found else Path(__file__).resolve().parents[1] / ".artifacts"
    path = path / "browser"
    path.mkdir(parents=True, exist_ok=True)
    return path


UPSTREAM_IP = "11.0.0.2"   # an ordinary (public) address inside the test's namespace
UPSTREAM_PORT = 8080
URL = f"http://up.test:{UPSTREAM_PORT}/"


class Namespace:
    """A network namespace of this test run whose loopback also holds UPSTREAM_IP: the
    gateway, its upstream and the browser all run in it, so nothing touches the host's
    network and the upstream is no loopback address (which the address guard refuses
    unless a network rule names it)."""

    def __init__(self) -> None:
        self.name = f"egdash{os.getpid()}"
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, check=False)
        for args in (["netns", "add", self.name],
                     ["-n", self.name, "link", "set", "lo", "up"],
                     ["-n", self.name, "addr", "add", f"{UPSTREAM_IP}/32", "dev", "lo"]):
            subprocess.run(["ip", *args], capture_output=True, check=True)

    def cmd(self, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *args]

    def curl(self, url: str, *args: str) -> tuple[int, str, str]:
        """(status, response headers, body) of one request made inside the namespace."""
        done = subprocess.run(self.cmd("curl", "-s", "-D", "/dev/stderr", "-w", "\n%{http_code}",
                                       "--max-time", "10", *args, url),
                              capture_output=True, text=True, check=False)
        body, _, status = done.stdout.rpartition("\n")
        return int(status) if status.isdigit() else 0, done.stderr, body

    def delete(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, check=False)


@pytest.fixture
def ns() -> Iterator[Namespace]:
    namespace = Namespace()  # needs root and iproute2 (.ci/run has both)
    try:
        yield namespace
    finally:
        namespace.delete()


@pytest.fixture
def upstream(ns: Namespace, tmp_path: Path) -> Iterator[None]:
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("hello from the upstream\n")
    proc = subprocess.Popen(ns.cmd(sys.executable, "-m", "http.server", str(UPSTREAM_PORT),
                                   "--bind", UPSTREAM_IP, "--directory", str(site)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert eventually(lambda: ns.curl(f"http://{UPSTREAM_IP}:{UPSTREAM_PORT}/")[0] == 200)
        yield
    finally:
        proc.terminate()
        proc.wait(10)


@dataclass
class Running:
    ns: Namespace
    proc: subprocess.Popen[str]
    proxy: str
    api: str
    admin: str

    def call(self, method: str, path: str, body: object = None) -> dict[str, Any]:
        data = ["-H", "Content-Type: application/json", "-d", json.dumps(body)] if body else []
        status, _head, text = self.ns.curl(f"{self.api}{path}", "-X", method, "-H",
                                           f"Authorization: Bearer {self.admin}", *data)
        assert status in (200, 201), text
        found: dict[str, Any] = json.loads(text)
        return found

    def token(self, role: str) -> str:
        token: str = self.call("POST", "/v1/tokens", {"name": f"{role}-1", "role": role}
                               )["token"]
        return token

    def fetch(self) -> int:
        """A request through the proxy to the upstream, by name."""
        return self.ns.curl(URL, "-x", self.proxy)[0]

    def with_cookie(self, path: str, value: str) -> tuple[int, str]:
        """(status, response headers) of a request carrying this session cookie."""
        status, head, _ = self.ns.curl(f"{self.api}{path}", "-H",
                                       f"Cookie: egressguard_session={value}")
        return status, head


@contextlib.contextmanager
def serving(ns: Namespace, home: Path) -> Iterator[Running]:
    proc = subprocess.Popen(
        ns.cmd(EGRESSGUARD, "serve", "--listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0",
               "--resolve", f"up.test={UPSTREAM_IP}", "--no-system-resolver",
               "--audit-writer", "thread"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "EGRESSGUARD_HOME": str(home)})
    assert proc.stdout is not None and proc.stderr is not None
    lines = [proc.stdout.readline() for _ in range(3)]
    proxy = re.search(r"listening on (\S+)", lines[0])
    api = re.search(r"REST API on (\S+)", lines[1])
    assert proxy and api, lines
    token = ""
    while not token.startswith("egt_"):
        token = proc.stderr.readline().strip()
    threading.Thread(target=proc.stderr.read, daemon=True).start()  # drain
    threading.Thread(target=proc.stdout.read, daemon=True).start()
    try:
        yield Running(ns, proc, f"http://{proxy.group(1)}", api.group(1), token)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0


def restrict(gw: Running) -> None:
    """Restricted egress and no rule for `up.test`: denied by default."""
    gw.call("PATCH", "/v1/clusters/default",
            {"properties": {"restrictOutboundNetworkAccess": "Enabled"}})


def eventually(check: Any, timeout: float = 10.0) -> Any:
    end = time.monotonic() + timeout
    while True:
        found = check()
        if found or time.monotonic() > end:
            return found
        time.sleep(0.2)


def launch(p: Any, ns: Namespace, tmp: Path) -> Any:
    """Debian's Chromium, started inside the namespace (a two-line wrapper that execs
    /usr/bin/chromium there; Playwright talks to it over a pipe)."""
    wrapper = tmp / "chromium-in-netns"
    wrapper.write_text(f'#!/bin/sh\nexec ip netns exec {ns.name} {CHROMIUM} "$@"\n')
    wrapper.chmod(0o755)
    return p.chromium.launch(executable_path=str(wrapper), headless=True, args=ARGS)


def log_in(page: Any, api: str, token: str) -> None:
    page.goto(f"{api}/dashboard")
    assert "/dashboard/login" in page.url  # no session yet: the login form
    page.fill("#token", token)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r".*/dashboard(\?.*)?$"))


CANVAS_INK = """(sel) => {
  // Pixels of the deny series' red in the upper half of the plot: a series of zeros lies
  // on the baseline, so red up there means a drawn, non-zero deny count.
  const c = document.querySelector(sel + ' canvas');
  if (!c) return -1;
  const d = c.getContext('2d').getImageData(0, 0, c.width, Math.floor(c.height / 2)).data;
  let red = 0;
  for (let i = 0; i < d.length; i += 4) {
    if (d[i + 3] > 150 && d[i] > 140 && d[i] < 220 && d[i + 1] < 90 && d[i + 2] < 90) red++;
  }
  return red;
}"""


def test_operator_sees_a_denial_live_proposes_an_allow_and_logs_out(
        tmp_path: Path, ns: Namespace, upstream: None) -> None:
    """The whole round trip, then an auditor's view of the same decisions."""
    shots = artifacts()
    with serving(ns, tmp_path / "home") as gw, sync_api.sync_playwright() as p:
        restrict(gw)
        operator, auditor = gw.token("operator"), gw.token("auditor")
        browser = launch(p, ns, tmp_path)
        try:
            context = browser.new_context(viewport={"width": WIDTH, "height": 900})
            page = context.new_page()
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            log_in(page, gw.api, operator)
            page.wait_for_selector("#live-status:has-text('Live: connected')", timeout=15000)
            page.wait_for_selector("#chart-decisions canvas", timeout=15000)
            page.screenshot(path=str(shots / "1-overview-before.png"), full_page=True)
            assert page.evaluate(CANVAS_INK, "#chart-decisions") == 0  # nothing denied yet

            # A denial while the page is open appears in the live table by itself ...
            assert gw.fetch() == 403
            row = page.locator("#live-body tr", has_text="up.test").first
            row.wait_for(timeout=20000)
            assert "deny" in row.inner_text()
            # ... and in the decisions chart, which redraws after it.
            assert eventually(lambda: page.evaluate(CANVAS_INK, "#chart-decisions") > 20,
                              15), "the chart does not show the denial"
            assert "deny: 1" in page.inner_text("#decision-summary")  # counts kept current
            page.screenshot(path=str(shots / "2-denial-live.png"), full_page=True)
            # Works at 1366 px: nothing wider than the window.
            assert page.evaluate("document.documentElement.scrollWidth") <= WIDTH
            # Keyboard: the first Tab reaches the skip link, with a visible focus ring.
            page.keyboard.press("Tab")
            focused = page.evaluate("""() => { const e = document.activeElement;
                const s = getComputedStyle(e);
                return [e.textContent, s.outlineStyle, s.outlineWidth]; }""")
            assert focused[0] == "Skip to content" and focused[1] != "none", focused

            # Propose allow from the live row, review the diff, apply it.
            row.get_by_role("link", name="Propose allow").click()
            page.wait_for_url(re.compile(r".*/dashboard/propose\?.*"))
            assert "+    - up.test" in page.locator("#diff pre").inner_text()
            page.screenshot(path=str(shots / "3-propose.png"), full_page=True)
            page.get_by_role("button", name=re.compile(r"Apply as version \d+")).click()
            page.wait_for_url(re.compile(r".*/dashboard/versions/2.*"))
            page.screenshot(path=str(shots / "4-applied-version.png"), full_page=True)
            assert eventually(lambda: gw.fetch() == 200, 10), "the allow is not enforced"

            # Log out: the copied session cookie no longer opens the dashboard.
            page.goto(f"{gw.api}/dashboard")
            cookie = next(c for c in context.cookies() if c["name"] == "egressguard_session")
            assert gw.with_cookie("/dashboard", cookie["value"])[0] == 200
            page.get_by_role("button", name="Log out").click()
            page.wait_for_url(re.compile(r".*/dashboard/login.*"))
            status, head = gw.with_cookie("/dashboard", cookie["value"])
            assert status == 303 and "location: /dashboard/login" in head.lower()
            assert gw.with_cookie("/dashboard/live", cookie["value"])[0] == 401
            page.screenshot(path=str(shots / "5-logged-out.png"), full_page=True)
            assert not errors, errors

            # An auditor sees the version in force at each decision: the denial under
            # version 1, the allowed retry under version 2; and no way to change policy.
            audit_page = browser.new_context(viewport={"width": WIDTH, "height": 900}
                                             ).new_page()
            log_in(audit_page, gw.api, auditor)
            rows = audit_page.locator("#live-body tr", has_text="up.test")
            rows.first.wait_for(timeout=15000)
            seen = {(r[3], r[6], r[7]) for r in (
                rows.nth(i).locator("td").all_inner_texts() for i in range(rows.count()))}
            assert {("deny", "(anonymous)", "1"), ("allow", "(anonymous)", "2")} <= seen, seen
            # ... and who made them: the curl calls carry no identity.
            who = audit_page.locator("#identities tbody tr").first.locator("td"
                                                                             ).all_inner_texts()
            assert who[0] == "(anonymous)" and int(who[1]) >= 1 and int(who[2]) >= 1, who
            assert "Propose allow" not in audit_page.content()
            audit_page.wait_for_selector("#chart-decisions canvas", timeout=15000)
            audit_page.screenshot(path=str(shots / "6-auditor.png"), full_page=True)

            # Before rolling back to version 1, the auditor replays it on the recorded
            # traffic: the retry version 2 let through would be denied again.
            audit_page.get_by_role("link", name="Replay a version or a candidate policy"
                                   ).click()
            audit_page.wait_for_url(re.compile(r".*/dashboard/replay\?.*"))
            audit_page.fill("#replay-version input[name=version]", "1")
            audit_page.select_option("#replay-version select[name=since]", "1h")
            audit_page.get_by_role("button", name="Replay version").click()
            audit_page.wait_for_selector("#replay-summary")
            denied = audit_page.locator("#newly-denied tbody tr", has_text="up.test:8080")
            cells = denied.first.locator("td").all_inner_texts()
            assert cells[1:] == ["127.0.0.1", "http", "up.test:8080"], cells
            assert int(cells[0]) >= 1
            assert "newly allowed" in audit_page.inner_text("#replay-summary")
            audit_page.screenshot(path=str(shots / "7-replay-version.png"), full_page=True)
            # A pasted candidate that allows up.test flips nothing the policy in force
            # let through; the denial under version 1 would now pass.
            audit_page.fill("#policy_text", "restrict_outbound_network_access: Enabled\n"
                            "application_rule_collections:\n  - name: web\n    rules:\n"
                            "      - {name: up, targets: [up.test], protocols: [http:8080]}\n")
            audit_page.get_by_role("button", name="Replay candidate").click()
            audit_page.wait_for_selector("#replay-summary:has-text('0 newly denied')")
            allowed = audit_page.locator("#newly-allowed tbody tr", has_text="up.test:8080")
            assert allowed.count() == 1
            assert audit_page.evaluate("document.documentElement.scrollWidth") <= WIDTH
            audit_page.screenshot(path=str(shots / "8-replay-candidate.png"), full_page=True)
        finally:
            browser.close()
