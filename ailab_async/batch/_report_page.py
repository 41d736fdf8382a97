"""The batch report's page, pure: HTML, CSS, script and inline-SVG charts from plain values.

:func:`render_page` turns a :class:`PageView` (what the report says, decided in
:mod:`._report`) into one self-contained HTML document. Every string that came from a server
or a file name is escaped here, in one place: text in the markup through :func:`html.escape`,
the items as JSON in a ``<script type="application/json">`` block with ``<``, ``>`` and ``&``
written as ``\\u`` escapes (so no ``</script>`` can end it), and the script puts them on the
page with ``textContent`` only, never as markup.

The page loads nothing from the network: its Content-Security-Policy allows no connection, no
font and no frame, images only from the page's own origin or local files (the thumbnails) and
``data:``, and only the one inline script and style whose hashes it names.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

__all__ = ["PAGE_SIZE", "Chart", "PageView", "render_page"]

#: Photos on one page of the report: the page holds every item's data (a few hundred bytes
#: each), but only this many cards are in the document at once.
PAGE_SIZE = 48

#: Chart drawing area, in SVG user units.
_WIDTH, _HEIGHT, _LEFT, _BOTTOM, _TOP = 360, 150, 44, 24, 10


@attrs.frozen
class Chart:
    """One small chart: bars (and an optional line on its own scale) over buckets.

    ``bars[i]`` is the height of bucket ``i``; ``line[i]`` a second quantity at the same
    bucket (``None``: not known there); ``x_labels`` the first and last bucket's labels.
    """

    title: str
    caption: str
    bars: Sequence[float] = ()
    bar_label: str = ""
    line: Sequence[float | None] = ()
    line_label: str = ""
    x_labels: tuple[str, str] = ("", "")
    #: Shown instead of the chart when there is nothing to draw.
    empty: str = "no data"

    @property
    def drawn(self) -> bool:
        """Whether there is anything to draw (else ``empty`` is shown)."""
        return bool(self.bars) or any(value is not None for value in self.line)


@attrs.frozen
class PageView:
    """Everything the page shows, as plain values (escaping is :func:`render_page`'s job)."""

    title: str
    #: (label, value, key) rows of the summary; ``key`` names the element for tests.
    counts: Sequence[tuple[str, int, str]]
    errors_by_code: Sequence[tuple[str, int]]
    charts: Sequence[Chart]
    notes: Sequence[str]
    #: The items as the script reads them (see :mod:`._report` for the keys).
    data: Mapping[str, Any]


def _hash_source(source: str) -> str:
    digest = hashlib.sha256(source.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"


_CSS = """
:root{--ok:#1b7f3b;--bad:#b3261e;--wait:#8a5a00;--ink:#1d1d1f;--mute:#5f6368;--line:#dadce0}
*{box-sizing:border-box}
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--ink);
margin:0;padding:16px 24px;background:#fafafa}
h1{font-size:20px;margin:0 0 12px}h2{font-size:16px;margin:20px 0 8px}
.summary{display:flex;flex-wrap:wrap;gap:8px}
.count{background:#fff;border:1px solid var(--line);border-radius:6px;padding:6px 12px}
.count b{display:block;font-size:20px}
.notes{color:var(--wait)}
.codes td{padding:2px 12px 2px 0}
.charts{display:flex;flex-wrap:wrap;gap:12px}
figure.chart{background:#fff;border:1px solid var(--line);border-radius:6px;margin:0;padding:8px}
figure.chart figcaption{color:var(--mute);font-size:12px;max-width:360px}
.controls{position:sticky;top:0;background:#fafafa;padding:8px 0;display:flex;flex-wrap:wrap;
gap:8px;align-items:center;border-bottom:1px solid var(--line);z-index:1}
.controls button[aria-pressed=true]{background:var(--ink);color:#fff}
button,select,input{font:inherit;padding:4px 10px;border:1px solid var(--line);
border-radius:4px;background:#fff}
#items{display:grid;grid-template-columns:repeat(auto-fill,minmax(330px,1fr));gap:12px;
padding:12px 0;margin:0;list-style:none}
.card{background:#fff;border:1px solid var(--line);border-radius:6px;padding:8px}
.card.failed{border-color:var(--bad)}
.card .name{font-weight:600;overflow-wrap:anywhere}
.pair{display:flex;gap:6px;margin:6px 0}
.pair figure{margin:0;flex:1;text-align:center;color:var(--mute);font-size:12px}
.pair img,.noimg{width:100%;height:150px;object-fit:contain;background:#eee;display:block}
.noimg{display:flex;align-items:center;justify-content:center}
.badge{display:inline-block;border-radius:3px;padding:0 6px;font-size:12px;color:#fff}
.s-downloaded{background:var(--ok)}.s-failed{background:var(--bad)}
.s-submitted,.s-succeeded,.s-pending,.s-sending{background:var(--wait)}
dl{margin:4px 0;display:grid;grid-template-columns:auto 1fr;gap:0 8px;font-size:12px}
dt{color:var(--mute)}dd{margin:0;overflow-wrap:anywhere}
.next{background:#fff4e5;padding:4px 6px;border-radius:4px;font-size:12px}
"""

_SCRIPT = """
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("report-data").textContent);
  var items = data.items, steps = data.steps, size = data.page_size;
  var state = {filter: "all", code: "", query: "", page: 0};
  var shown = items;
  var list = document.getElementById("items");
  var pageLabel = document.getElementById("page");
  var shownLabel = document.getElementById("shown");

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) { node.className = cls; }
    if (text !== undefined && text !== null) { node.textContent = String(text); }
    return node;
  }
  function failed(item) { return item.s !== "downloaded"; }
  function matches(item) {
    if (state.filter === "failures" && !failed(item)) { return false; }
    if (state.filter === "done" && failed(item)) { return false; }
    if (state.code && item.c !== state.code) { return false; }
    if (state.query && item.n.toLowerCase().indexOf(state.query) < 0) { return false; }
    return true;
  }
  function pages() { return Math.max(1, Math.ceil(shown.length / size)); }
  function href(path) { return path.split("/").map(encodeURIComponent).join("/"); }
  function picture(name, label) {
    var figure = el("figure");
    if (name) {
      var img = el("img");
      img.loading = "lazy";
      img.decoding = "async";
      img.alt = label;
      img.width = data.thumb_size;
      img.height = data.thumb_size;
      img.className = "thumb-" + label;
      img.src = data.thumbs + "/" + name;
      figure.appendChild(img);
    } else {
      figure.appendChild(el("div", "noimg", "no picture"));
    }
    figure.appendChild(el("figcaption", "", label));
    return figure;
  }
  function detail(dl, term, value) {
    if (value === undefined || value === null || value === "") { return; }
    dl.appendChild(el("dt", "", term));
    dl.appendChild(el("dd", "", value));
  }
  function card(item) {
    var li = el("li", failed(item) ? "card failed" : "card");
    li.dataset.state = item.s;
    var head = el("div");
    head.appendChild(el("span", "badge s-" + item.s, item.s));
    head.appendChild(document.createTextNode(" "));
    var name = el("span", "name", item.n);
    if (item.f) {
      name = el("a", "name", item.n);
      name.href = href(item.f);
    }
    head.appendChild(name);
    li.appendChild(head);
    var pair = el("div", "pair");
    pair.appendChild(picture(item.b, "before"));
    pair.appendChild(picture(item.o, "after"));
    li.appendChild(pair);
    var dl = el("dl");
    detail(dl, "code", item.c);
    detail(dl, "message", item.m);
    detail(dl, "request_id", item.r);
    detail(dl, "log_id", item.l);
    detail(dl, "task_id", item.t);
    detail(dl, "attempts", item.a);
    detail(dl, "this run", item.h);
    if (dl.childNodes.length) { li.appendChild(dl); }
    if (item.x !== undefined && item.x !== null) { li.appendChild(el("p", "next", steps[item.x])); }
    return li;
  }
  function render() {
    state.page = Math.min(state.page, pages() - 1);
    var start = state.page * size;
    var cards = shown.slice(start, start + size).map(card);
    list.replaceChildren.apply(list, cards);
    pageLabel.textContent = "page " + (state.page + 1) + " of " + pages();
    shownLabel.textContent = shown.length + " of " + items.length + " photos";
    document.getElementById("prev").disabled = state.page === 0;
    document.getElementById("next").disabled = state.page >= pages() - 1;
    document.documentElement.dataset.ready = "1";
  }
  function apply() {
    shown = items.filter(matches);
    state.page = 0;
    render();
  }
  document.querySelectorAll("[data-filter]").forEach(function (button) {
    button.addEventListener("click", function () {
      state.filter = button.dataset.filter;
      document.querySelectorAll("[data-filter]").forEach(function (other) {
        other.setAttribute("aria-pressed", String(other === button));
      });
      apply();
    });
  });
  var codes = document.getElementById("code");
  data.codes.forEach(function (code) { codes.appendChild(el("option", "", code)); });
  codes.addEventListener("change", function () { state.code = codes.value; apply(); });
  document.getElementById("search").addEventListener("input", function (event) {
    state.query = event.target.value.toLowerCase();
    apply();
  });
  document.getElementById("prev").addEventListener("click", function () {
    state.page -= 1; render(); window.scrollTo(0, list.offsetTop - 60);
  });
  document.getElementById("next").addEventListener("click", function () {
    state.page += 1; render(); window.scrollTo(0, list.offsetTop - 60);
  });
  render();
})();
"""

_POLICY = (
    # file: as well as 'self': browsers differ on whether 'self' covers a page opened from
    # the disk; neither is the network.
    "default-src 'none'; img-src 'self' file: data:; "
    f"style-src {_hash_source(_CSS)}; script-src {_hash_source(_SCRIPT)}; "
    "base-uri 'none'; form-action 'none'"
)


def _json_for_script(value: Mapping[str, Any]) -> str:
    """JSON that cannot end the ``<script>`` block it sits in, whatever its strings hold."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def _number(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".")


def chart_svg(chart: Chart) -> str:
    """An inline SVG of ``chart``: bars on the left scale, the line on the right one."""
    esc = html.escape
    if not chart.drawn:
        return f'<p class="empty">{esc(chart.empty)}</p>'
    buckets = max(len(chart.bars), len(chart.line), 1)
    plot_w, plot_h = _WIDTH - _LEFT - 40, _HEIGHT - _BOTTOM - _TOP
    step = plot_w / buckets
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_WIDTH}" height="{_HEIGHT}" '
        f'viewBox="0 0 {_WIDTH} {_HEIGHT}" role="img" aria-label="{esc(chart.title)}">',
        f'<line x1="{_LEFT}" y1="{_TOP + plot_h}" x2="{_LEFT + plot_w}" y2="{_TOP + plot_h}" '
        'stroke="#999"/>',
    ]
    top = max(chart.bars, default=0.0)
    if chart.bars:
        scale = plot_h / top if top > 0 else 0.0
        for index, value in enumerate(chart.bars):
            height = value * scale
            parts.append(
                f'<rect x="{_LEFT + index * step + 0.5:.1f}" y="{_TOP + plot_h - height:.1f}" '
                f'width="{max(step - 1, 0.5):.1f}" height="{height:.1f}" fill="#4f7cac">'
                f"<title>{_number(value)}</title></rect>"
            )
        parts.append(
            f'<text x="{_LEFT - 4}" y="{_TOP + 8}" text-anchor="end" font-size="10" '
            f'fill="#4f7cac">{_number(top)}</text>'
            f'<text x="{_LEFT - 4}" y="{_TOP + plot_h}" text-anchor="end" font-size="10" '
            'fill="#4f7cac">0</text>'
        )
    known = [v for v in chart.line if v is not None]
    if known:
        high = max(known) or 1.0
        points = " ".join(
            f"{_LEFT + (index + 0.5) * step:.1f},{_TOP + plot_h - value / high * plot_h:.1f}"
            for index, value in enumerate(chart.line)
            if value is not None
        )
        parts.append(f'<polyline points="{points}" fill="none" stroke="#c0392b" stroke-width="2"/>')
        parts.append(
            f'<text x="{_LEFT + plot_w + 4}" y="{_TOP + 8}" font-size="10" fill="#c0392b">'
            f"{_number(high)}</text>"
        )
    first, last = chart.x_labels
    parts.append(
        f'<text x="{_LEFT}" y="{_HEIGHT - 6}" font-size="10" fill="#5f6368">{esc(first)}</text>'
        f'<text x="{_LEFT + plot_w}" y="{_HEIGHT - 6}" font-size="10" text-anchor="end" '
        f'fill="#5f6368">{esc(last)}</text></svg>'
    )
    return "".join(parts)


def _legend(chart: Chart) -> str:
    esc = html.escape
    keys: list[str] = []
    if not chart.drawn:
        return ""
    if chart.bars and chart.bar_label:
        keys.append(f'<span class="key-bars">bars: {esc(chart.bar_label)}</span>')
    if chart.line and chart.line_label:
        keys.append(f'<span class="key-line">line: {esc(chart.line_label)}</span>')
    return "; ".join(keys)


def render_page(view: PageView) -> str:
    """The whole HTML document of a report.

    >>> page = render_page(PageView("t", [("photos", 1, "total")], [], [], [], {"items": []}))
    >>> page.startswith("<!DOCTYPE html>") and "Content-Security-Policy" in page
    True
    """
    esc = html.escape
    counts = "".join(
        f'<div class="count" id="count-{esc(key)}"><b>{value}</b>{esc(label)}</div>'
        for label, value, key in view.counts
    )
    codes = "".join(
        f"<tr><td>{esc(code)}</td><td>{count}</td></tr>" for code, count in view.errors_by_code
    )
    codes_block = f'<h2>Errors by code</h2><table class="codes">{codes}</table>' if codes else ""
    notes = "".join(f"<p>{esc(note)}</p>" for note in view.notes)
    charts = "".join(
        f'<figure class="chart"><figcaption><b>{esc(chart.title)}</b></figcaption>'
        f"{chart_svg(chart)}<figcaption>{esc(chart.caption)} {_legend(chart)}</figcaption>"
        "</figure>"
        for chart in view.charts
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{esc(_POLICY)}">
<meta name="referrer" content="no-referrer">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(view.title)}</title>
<style>{_CSS}</style></head>
<body>
<h1>{esc(view.title)}</h1>
<section class="summary">{counts}</section>
<section class="notes">{notes}</section>
{codes_block}
<h2>This run</h2><section class="charts">{charts}</section>
<h2>Photos</h2>
<noscript><p>The photo list needs JavaScript (it runs only inside this page).</p></noscript>
<div class="controls">
<button type="button" data-filter="all" aria-pressed="true">All</button>
<button type="button" data-filter="failures" aria-pressed="false">Failures</button>
<button type="button" data-filter="done" aria-pressed="false">Done</button>
<label>code <select id="code"><option value="">any</option></select></label>
<input id="search" type="search" placeholder="file name" aria-label="file name">
<button type="button" id="prev">previous</button><span id="page"></span>
<button type="button" id="next">next</button><span id="shown"></span>
</div>
<ul id="items"></ul>
<script type="application/json" id="report-data">{_json_for_script(view.data)}</script>
<script>{_SCRIPT}</script>
</body></html>
"""


def nice_ceiling(value: float) -> float:
    """A round number at least ``value`` (1, 2, 5 times a power of ten), for bucket widths.

    >>> nice_ceiling(0.3), nice_ceiling(7), nice_ceiling(0)
    (0.5, 10.0, 1.0)
    """
    if value <= 0:
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    for factor in (1.0, 2.0, 5.0, 10.0):
        if value <= factor * power:
            return factor * power
    return 10.0 * power  # pragma: no cover - the loop always returns
