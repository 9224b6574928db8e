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


def test_host_names_break_only_after_their_dots() -> None:
    from egressguard.web.html import host

    out = host("storage-account-with-a-long-name.blob.core.windows.net")
    assert out == ('<span class="host" title="storage-account-with-a-long-name.blob.core.'
                   'windows.net">storage-account-with-a-long-name.<wbr>blob.<wbr>core.<wbr>'
                   'windows.<wbr>net</span>')
    assert host("up.test") == '<span class="host short" title="up.test">up.test</span>'
    assert "&lt;b&gt;.<wbr>x" in host("<b>." + "x" * 40)


def test_the_stylesheet_never_breaks_words_anywhere() -> None:
    from importlib import resources

    css = resources.files("egressguard.web").joinpath("static/dashboard.css").read_text()
    assert "break-all" not in css
    assert ".host { word-break: normal; overflow-wrap: normal;" in css


def test_a_report_only_gateway_says_so_whatever_the_policy() -> None:
    from egressguard.web.views import report_only_text

    class Summary:
        report_only = False

    assert report_only_text(Summary(), gateway=True).startswith("yes")  # type: ignore[arg-type]
    assert report_only_text(Summary(), gateway=False) == "no"  # type: ignore[arg-type]
    Summary.report_only = True
    assert report_only_text(Summary(), gateway=False).startswith("yes")  # type: ignore[arg-type]


def _contrast(a: str, b: str) -> float:
    def lum(h: str) -> float:
        c = [int(h[i:i + 2], 16) / 255 for i in (1, 3, 5)]
        c = [x / 12.92 if x <= 0.03928 else ((x + 0.055) / 1.055) ** 2.4 for x in c]
        return 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2]

    hi, lo = sorted((lum(a), lum(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def test_text_colours_meet_wcag_aa_contrast() -> None:
    """Small text (badges are 12 px) needs 4.5:1 against what it sits on."""
    import re
    from importlib import resources

    css = resources.files("egressguard.web").joinpath("static/dashboard.css").read_text()
    var = dict(re.findall(r"--([a-z]+): (#[0-9a-f]{6})", css))
    pairs = [(var["fg"], var["bg"]), (var["fg"], var["card"]), (var["muted"], var["card"]),
             (var["muted"], var["bg"]), (var["deny"], var["card"])]
    for outcome in ("allow", "deny", "would-deny"):
        rule = re.search(r"\.badge\." + outcome + r" \{ background: (#[0-9a-f]{6}); "
                         r"color: var\(--([a-z]+)\); \}", css)
        assert rule, outcome
        pairs.append((var[rule.group(2)], rule.group(1)))
    for fg, bg in pairs:
        assert _contrast(fg, bg) >= 4.5, (fg, bg, round(_contrast(fg, bg), 2))
