"""Draw the adaptive limiter's pace over time from a ``bench_batch`` run, as a plain SVG.

Reads the JSON that ``python -m benchmarks.bench_batch --json PATH`` writes and draws, for a
few shapes of the zoo (one panel each), what scenario A (``client.map`` with no
``rate_limit``) did over time: the pace the limiter sent at, the photos that succeeded per
half second (scaled to per second), and the server's true limit. Hand-written SVG (a few
polylines and labels), so the documentation's figure needs no plotting library::

    python -m benchmarks.bench_batch --skip-rss --scenarios A --shapes sliding,changing \\
        --json batch.json
    python -m benchmarks.plot_rate batch.json --out docs/img/rate-over-time.svg
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from .bench_batch import SCENARIO_ADAPTIVE, Shape, zoo

WIDTH = 720
PANEL_HEIGHT = 220
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 56, 16, 28, 34
BIN = 0.5  # seconds per bar of successes
COLOURS = {"pace": "#1f6feb", "accepted": "#8b949e", "limit": "#cf222e"}


def _limit_steps(shape: Shape, until: float) -> list[tuple[float, float]]:
    """The true limit as ``(time, rate)`` corners of a step line from 0 to ``until``."""
    if shape.limit.shape == "concurrency":
        return []
    points: list[tuple[float, float]] = []
    edges = [0.0, *(at for at, _ in shape.limit.schedule if at < until), until]
    for start, end in itertools.pairwise(edges):
        rate = shape.limit.rate_at(start)
        points += [(start, rate), (end, rate)]
    return points


def _successes_per_second(succeeded_at: Sequence[float], until: float) -> list[tuple[float, float]]:
    bins = [0] * (int(until / BIN) + 1)
    for t in succeeded_at:
        bins[min(len(bins) - 1, int(t / BIN))] += 1
    return [(i * BIN + BIN / 2, count / BIN) for i, count in enumerate(bins)]


def _panel(run: dict[str, Any], shape: Shape, top: float, y_max: float, t_max: float) -> list[str]:
    left, right = MARGIN_LEFT, WIDTH - MARGIN_RIGHT
    bottom = top + PANEL_HEIGHT - MARGIN_BOTTOM
    plot_top = top + MARGIN_TOP

    def x(t: float) -> float:
        return left + (right - left) * t / t_max

    def y(rate: float) -> float:
        return bottom - (bottom - plot_top) * min(rate, y_max) / y_max

    def line(points: Sequence[tuple[float, float]], colour: str, extra: str = "") -> str:
        coordinates = " ".join(f"{x(t):.1f},{y(r):.1f}" for t, r in points)
        return (
            f'<polyline fill="none" stroke="{colour}" stroke-width="2" {extra}'
            f'points="{coordinates}"/>'
        )

    title = (
        f"{shape.label}: {run['wall_seconds']:.1f} s for an ideal {run['ideal_seconds']:.1f} s "
        f"({run['wall_seconds'] / run['ideal_seconds']:.2f}x), {run['rate_limited']} x 429"
    )
    parts = [
        f'<text x="{left}" y="{top + 18}" font-size="13" font-weight="bold">{escape(title)}</text>',
        f'<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#444"/>',
        f'<line x1="{left}" y1="{plot_top}" x2="{left}" y2="{bottom}" stroke="#444"/>',
    ]
    for tick in range(0, int(y_max) + 1, 25):
        parts.append(
            f'<text x="{left - 6}" y="{y(tick) + 4:.1f}" font-size="10" text-anchor="end">'
            f"{tick}</text>"
        )
        parts.append(
            f'<line x1="{left}" y1="{y(tick):.1f}" x2="{right}" y2="{y(tick):.1f}" stroke="#eee"/>'
        )
    for second in range(0, int(t_max) + 1, 2):
        parts.append(
            f'<text x="{x(second):.1f}" y="{bottom + 14}" font-size="10" text-anchor="middle">'
            f"{second}</text>"
        )
    parts.append(
        f'<text x="{right}" y="{bottom + 28}" font-size="10" text-anchor="end">seconds</text>'
    )
    parts.append(
        f'<text x="12" y="{(plot_top + bottom) / 2:.1f}" font-size="10" '
        f'transform="rotate(-90 12 {(plot_top + bottom) / 2:.1f})" text-anchor="middle">'
        "requests/s</text>"
    )
    wall = float(run["wall_seconds"])
    accepted = _successes_per_second(run["succeeded_at"], wall)
    parts.append(line(accepted, COLOURS["accepted"], 'stroke-opacity="0.8" '))
    steps = _limit_steps(shape, t_max)
    if steps:
        parts.append(line(steps, COLOURS["limit"], 'stroke-dasharray="6 4" '))
    pace = [(p["t"], p["pace"]) for p in run["timeline"] if p["pace"] is not None]
    parts.append(line(pace, COLOURS["pace"]))
    return parts


def render(result: dict[str, Any], labels: Sequence[str]) -> str:
    """The SVG of scenario A's runs on the shapes named ``labels``."""
    shapes = {shape.label: shape for shape in zoo(result["rps"], result["latency"])}
    runs = [
        run
        for label in labels
        for run in result["runs"]
        if run["scenario"] == SCENARIO_ADAPTIVE and run["shape"] == label
    ]
    if not runs:
        raise SystemExit(f"no scenario A run for {', '.join(labels)} in this JSON")
    t_max = max(float(run["wall_seconds"]) for run in runs)
    y_max = 25.0 * (int(max(p["pace"] or 0 for r in runs for p in r["timeline"]) / 25) + 1)
    y_max = min(y_max, 4 * result["rps"])
    height = PANEL_HEIGHT * len(runs) + 40
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" font-family="sans-serif">',
        f'<rect width="{WIDTH}" height="{height}" fill="white"/>',
    ]
    for index, run in enumerate(runs):
        parts += _panel(run, shapes[run["shape"]], index * PANEL_HEIGHT, y_max, t_max)
    legend_y = height - 14
    for offset, (name, text) in enumerate(
        (
            ("pace", "pace the client sent at"),
            ("accepted", "photos succeeded per second"),
            ("limit", "the server's limit"),
        )
    ):
        x0 = MARGIN_LEFT + offset * 220
        dash = ' stroke-dasharray="6 4"' if name == "limit" else ""
        parts.append(
            f'<line x1="{x0}" y1="{legend_y - 4}" x2="{x0 + 24}" y2="{legend_y - 4}" '
            f'stroke="{COLOURS[name]}" stroke-width="2"{dash}/>'
        )
        parts.append(f'<text x="{x0 + 30}" y="{legend_y}" font-size="11">{text}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.plot_rate", description=__doc__)
    parser.add_argument("json", help="what bench_batch --json wrote")
    parser.add_argument("--out", default="docs/img/rate-over-time.svg", help="the SVG to write")
    parser.add_argument(
        "--shapes",
        help="comma-separated shape labels as in the table (default: the sliding window and "
        "the changing limit)",
    )
    args = parser.parse_args(argv)
    result = json.loads(Path(args.json).read_text(encoding="utf-8"))
    if args.shapes:
        labels = [label.strip() for label in args.shapes.split(",")]
    else:
        keys = {"sliding", "changing"}
        labels = [s.label for s in zoo(result["rps"], result["latency"]) if s.key in keys]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(render(result, labels), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
