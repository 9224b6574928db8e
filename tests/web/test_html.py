"""The escape-by-default builder: only markup built here is markup."""

from __future__ import annotations

from egressguard.store import Store
from egressguard.web.data import FindingsCache
from egressguard.web.html import Raw, esc, link, table, tag
from egressguard.web.views import size


def test_text_is_escaped_and_raw_markup_is_kept() -> None:
    assert esc('<a href="x">\'') == "&lt;a href=&quot;x&quot;&gt;&#x27;"
    assert esc(Raw("<b>ok</b>")) == "<b>ok</b>"
    assert esc(None) == ""
    assert tag("td", "<i>") == "<td>&lt;i&gt;</td>"
    assert tag("td", tag("i", "x")) == "<td><i>x</i></td>"


def test_attributes_cannot_be_broken_out_of() -> None:
    """Attack: a value closing the attribute and adding an event handler."""
    assert link("x", '" onmouseover="alert(1)') == (
        '<a href="&quot; onmouseover=&quot;alert(1)">x</a>')
    assert tag("span", "", class_="a'b") == '<span class="a&#x27;b"></span>'


def test_a_table_escapes_every_cell_and_says_when_empty() -> None:
    rendered = table(["h<1>"], [["<script>"], [tag("code", "c")]])
    assert "<th>h&lt;1&gt;</th>" in rendered and "<td>&lt;script&gt;</td>" in rendered
    assert "<td><code>c</code></td>" in rendered
    assert table(["h"], [], empty="<nothing>") == '<p class="empty">&lt;nothing&gt;</p>'


def test_sizes_for_people() -> None:
    assert [size(n) for n in (0, 1023, 1024, 5_000_000, 2**50)] == [
        "0 B", "1023 B", "1.0 KiB", "4.8 MiB", "1024.0 TiB"]


def test_findings_are_recomputed_after_their_ttl(tmp_path: object) -> None:
    with Store(f"sqlite:///{tmp_path}/s.db") as store:
        version = store.current("default")
        cache = FindingsCache(ttl=3600)
        first = cache.get(version)
        assert cache.get(version) is first
        stale = FindingsCache(ttl=0)
        assert stale.get(version) is not stale.get(version)
