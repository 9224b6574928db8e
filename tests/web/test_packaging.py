"""What the package must carry for the dashboard and the CLI's API client to work offline
after `pip install`: httpx at run time, the vendored chart library and its licence."""

from __future__ import annotations

import re
import tomllib
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def project() -> dict:  # type: ignore[type-arg]
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]  # type: ignore[no-any-return]


def test_httpx_is_a_runtime_dependency_not_only_a_dev_one() -> None:
    """A plain `pip install` must give the CLI's `--api` client its HTTP library."""
    assert any(re.match(r"httpx\b", d) for d in project()["dependencies"])


def test_the_browser_tests_use_playwright_from_the_dev_extra() -> None:
    assert any(d.startswith("playwright") for d in project()["optional-dependencies"]["dev"])
    assert "chromium" in (ROOT / ".ci/run").read_text()


def test_the_vendored_chart_library_is_recorded_with_its_version_and_licence() -> None:
    vendor = resources.files("egressguard.web").joinpath("static/vendor")
    script = vendor.joinpath("uPlot.iife.min.js").read_text()
    licence = vendor.joinpath("uPlot.LICENSE").read_text()
    assert licence.startswith("The MIT License") and "Leon Sorokin" in licence
    notes = (ROOT / "docs/third-party.md").read_text()
    row = next(line for line in notes.splitlines() if line.startswith("| uPlot"))
    assert "| 1.6.32 |" in row and "MIT" in row
    assert script.startswith("/*! https://github.com/leeoniya/uPlot (v1.6.32) */")


def test_pages_load_scripts_from_the_package_only() -> None:
    from egressguard.web.html import SCRIPTS

    sources = re.findall(r'(?:src|href)="([^"]+)"', SCRIPTS)
    assert sources and all(s.startswith("/dashboard/static/") for s in sources)
