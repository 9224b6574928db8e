"""A gateway started with `--report-only` permits everything; its dashboard must say
"Report-only: yes" even though the stored policy itself is not report-only."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from tests.web.conftest import Sections

pytestmark = pytest.mark.timeout(90)
EGRESSGUARD = str(Path(sys.executable).parent / "egressguard")


def test_the_dashboard_of_a_report_only_gateway_says_report_only_yes(tmp_path: Path) -> None:
    """(Without the flag the page says "no": tests/web/test_dashboard.py.)"""
    proc = subprocess.Popen(
        [EGRESSGUARD, "serve", "--listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0",
         "--no-system-resolver", "--audit-writer", "thread",
         "--report-only"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "EGRESSGUARD_HOME": str(tmp_path)})
    assert proc.stdout is not None and proc.stderr is not None
    try:
        lines = [proc.stdout.readline() for _ in range(3)]
        api = re.search(r"REST API on (\S+)", lines[1])
        assert api, lines
        token = ""
        while not token.startswith("egt_"):
            token = proc.stderr.readline().strip()
        threading.Thread(target=proc.stderr.read, daemon=True).start()
        page = httpx.get(f"{api.group(1)}/dashboard",
                         headers={"Authorization": f"Bearer {token}"})
        assert page.status_code == 200
        rows = dict((r[0], r[1]) for r in Sections(page.text).rows["policy"] if len(r) == 2)
        assert rows["Report-only"].startswith("yes (the gateway runs with --report-only")
        assert "Report-only: yes." in page.text  # the banner above every panel
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
