"""Charts as inline SVG, drawn on the server: no JavaScript, no build step, nothing fetched from a CDN.

    svg = line_chart([Series("loss", [(0, 9.1), (1, 8.7)])], title="loss", x_label="step", y_label="nats")

    svg = bar_chart([Bar("baseline", 301.2, 1.4), Bar("my_idea", 288.0, 2.1)], title="time", y_label="s")

A line chart is `<svg class="chart" data-series=N data-points=M>` with one `<polyline class="series">`
per series (a step line for record progressions), axes with a few round ticks, and a legend.
Long series are thinned to MAX_POINTS by keeping every k-th point (and the last).
A bar chart is `<svg class="chart bars" data-bars=N data-errors=M>`: one `<rect class="bar">` per bar, drawn
from zero (its length is its value), and one `<line class="error">` of ± std per bar that has one.
"""

import math
from dataclasses import dataclass
from datetime import datetime
from html import escape

from markupsafe import Markup

MAX_POINTS = 1000
COLORS = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563", "#ca8a04")


@dataclass
class Series:
    label: str
    points: list[tuple[float, float]]
    color: str | None = None


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(n - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _fmt(v: float, time_axis: bool = False) -> str:
    if time_axis:
        return datetime.fromtimestamp(v).strftime("%Y-%m-%d")
    if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
        return f"{v:.2g}"
    return f"{v:.4g}"


def _thin(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    points = [(x, y) for x, y in points if x is not None and y is not None and math.isfinite(x) and math.isfinite(y)]
    if len(points) <= MAX_POINTS:
        return points
    k = math.ceil(len(points) / MAX_POINTS)
    return points[::k] + ([points[-1]] if (len(points) - 1) % k else [])


LEFT, RIGHT, TOP, BOTTOM = 64, 16, 28, 40  # the plot area's margins inside the svg


def _head(kind: str, title: str, width: int, height: int, **data: int) -> str:
    attrs = "".join(f' data-{k}="{v}"' for k, v in data.items())
    return (
        f'<svg class="{kind}" role="img" aria-label="{escape(title)}"{attrs} viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>'
    )


def _empty(parts: list[str], width: int, height: int) -> Markup:
    parts.append(f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" class="empty">no data</text></svg>')
    return Markup("".join(parts))


def _y_axis(parts: list[str], title: str, y_label: str, y0: float, y1: float, width: int, height: int):
    """The title, both axis lines, the y ticks with their grid lines and the y label; returns y -> svg y."""
    pw, ph = width - LEFT - RIGHT, height - TOP - BOTTOM

    def sy(y: float) -> float:
        return TOP + (1 - (y - y0) / (y1 - y0)) * ph

    parts.append(f'<text x="{LEFT}" y="16" class="chart-title" font-size="13" font-weight="600">{escape(title)}</text>')
    parts.append(f'<line x1="{LEFT}" y1="{TOP + ph}" x2="{LEFT + pw}" y2="{TOP + ph}" stroke="#888"/>')
    parts.append(f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{TOP + ph}" stroke="#888"/>')
    for t in _nice_ticks(y0, y1):
        y = sy(t)
        parts.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + pw}" y2="{y:.1f}" stroke="#eee"/>')
        parts.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11">{_fmt(t)}</text>')
    parts.append(
        f'<text x="12" y="{TOP + ph / 2}" text-anchor="middle" font-size="11" '
        f'transform="rotate(-90 12 {TOP + ph / 2})">{escape(y_label)}</text>'
    )
    return sy


def line_chart(
    series: list[Series],
    *,
    title: str,
    x_label: str,
    y_label: str,
    width: int = 640,
    height: int = 260,
    step: bool = False,
    x_is_time: bool = False,
) -> Markup:
    """An SVG line chart; `step` draws each value until the next (a record progression)."""
    series = [Series(s.label, _thin(s.points), s.color or COLORS[i % len(COLORS)]) for i, s in enumerate(series)]
    series = [s for s in series if s.points]
    n_points = sum(len(s.points) for s in series)
    parts = [_head("chart", title, width, height, series=len(series), points=n_points)]
    if not series:
        return _empty(parts, width, height)
    xs = [x for s in series for x, _ in s.points]
    ys = [y for s in series for _, y in s.points]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    if y1 == y0:
        pad = abs(y0) * 0.05 or 1.0
        y0, y1 = y0 - pad, y1 + pad
    pw, ph = width - LEFT - RIGHT, height - TOP - BOTTOM

    def sx(x: float) -> float:
        return LEFT + (x - x0) / (x1 - x0) * pw

    sy = _y_axis(parts, title, y_label, y0, y1, width, height)
    for t in _nice_ticks(x0, x1, 4 if x_is_time else 6):
        x = sx(t)
        parts.append(
            f'<text x="{x:.1f}" y="{TOP + ph + 16}" text-anchor="middle" font-size="11">{_fmt(t, x_is_time)}</text>'
        )
    parts.append(
        f'<text x="{LEFT + pw / 2}" y="{height - 6}" text-anchor="middle" font-size="11">{escape(x_label)}</text>'
    )
    for i, s in enumerate(series):
        pts = s.points
        if step:
            stepped = []
            for (xa, ya), (xb, _) in zip(pts, pts[1:], strict=False):
                stepped += [(xa, ya), (xb, ya)]
            pts = stepped + [pts[-1], (x1, pts[-1][1])]
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
        parts.append(
            f'<polyline class="series" data-label="{escape(s.label)}" fill="none" stroke="{s.color}" '
            f'stroke-width="1.8" points="{coords}"/>'
        )
        if len(s.points) <= 40:
            for x, y in s.points:
                parts.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" fill="{s.color}"/>')
        if len(series) > 1:  # one series is named by the title
            lx = LEFT + pw - 140
            parts.append(f'<rect x="{lx}" y="{TOP + 4 + 14 * i}" width="10" height="3" fill="{s.color}"/>')
            parts.append(f'<text x="{lx + 14}" y="{TOP + 9 + 14 * i}" font-size="11">{escape(s.label)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


@dataclass
class Bar:
    label: str
    value: float
    std: float | None = None  # the error bar's half length; None draws none (fewer than 2 runs)


def _has_error(b: Bar) -> bool:
    return b.std is not None and math.isfinite(b.std)


def bar_chart(bars: list[Bar], *, title: str, y_label: str, width: int = 640, height: int = 260) -> Markup:
    """An SVG bar chart from zero with ± std error bars, each bar labelled below and its value above."""
    bars = [b for b in bars if b.value is not None and math.isfinite(b.value)]
    n_errors = sum(_has_error(b) for b in bars)
    parts = [_head("chart bars", title, width, height, bars=len(bars), errors=n_errors)]
    if not bars:
        return _empty(parts, width, height)
    y0 = min(0.0, *(b.value - (b.std or 0) for b in bars))
    y1 = max(0.0, *(b.value + (b.std or 0) for b in bars))
    y1 += (y1 - y0) * 0.12 or 1.0  # head room for the value labels
    sy = _y_axis(parts, title, y_label, y0, y1, width, height)
    slot = (width - LEFT - RIGHT) / len(bars)
    for i, b in enumerate(bars):
        color, x = COLORS[i % len(COLORS)], LEFT + slot * i
        top, bottom = sorted((sy(b.value), sy(0.0)))
        parts.append(
            f'<rect class="bar" data-label="{escape(b.label)}" data-value="{b.value:.6g}" x="{x + slot * 0.2:.1f}" '
            f'y="{top:.1f}" width="{slot * 0.6:.1f}" height="{bottom - top:.1f}" fill="{color}" fill-opacity="0.75"/>'
        )
        mid, text = x + slot / 2, f"{_fmt(b.value)}"
        if _has_error(b):
            lo, hi = sy(b.value - b.std), sy(b.value + b.std)
            parts.append(
                f'<line class="error" data-std="{b.std:.6g}" x1="{mid:.1f}" y1="{lo:.1f}" x2="{mid:.1f}" '
                f'y2="{hi:.1f}" stroke="#111" stroke-width="1.5"/>'
            )
            for y in (lo, hi):
                parts.append(f'<line x1="{mid - 6:.1f}" y1="{y:.1f}" x2="{mid + 6:.1f}" y2="{y:.1f}" stroke="#111"/>')
            text += f" ± {_fmt(b.std)}"
        label_y = min(top, sy(b.value + (b.std or 0))) - 5
        parts.append(f'<text x="{mid:.1f}" y="{label_y:.1f}" text-anchor="middle" font-size="11">{text}</text>')
        parts.append(
            f'<text x="{mid:.1f}" y="{height - BOTTOM + 16}" text-anchor="middle" font-size="11">'
            f"{escape(b.label[:40])}</text>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))
