"""Inline SVG charts for the HTML run report: plain SVG built server-side, so the page needs no script or CDN
and renders the same offline, in a browser or a screenshot."""

from __future__ import annotations

import math
from collections import Counter

BINS = 20
Span = tuple[float, float]
W, H, LEFT, RIGHT, TOP, BOTTOM = 560, 230, 56, 16, 14, 44
COLORS = {"drop": "#c8553d", "keep": "#4f6d7a", "rephrase": "#2a9d8f", "none": "#b0b7bf"}  # by routing action


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """Round tick values (1, 2 or 5 x 10^k apart) inside [lo, hi]."""
    raw = (hi - lo) / n if hi > lo else 1.0
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 5, 10) if raw <= step * m)
    return [i * step for i in range(math.ceil(lo / step), math.floor(hi / step) + 1)]


def _fmt(v: float) -> str:
    return f"{v / 1000:g}k" if abs(v) >= 10_000 else f"{v:g}"


class Plot:
    """One SVG chart in pixel units: axes with ticks, then shapes (`rect`, `line`, `dot`, `text`) and a legend."""

    def __init__(self, x: Span, y: Span, labels: tuple[str, str], log_x: bool = False, h: int = H) -> None:
        self.w, self.h, self.log_x = W, h, log_x
        self.shapes: list[dict] = []
        self.legend: list[tuple[str, str]] = []
        self._x = (math.log10(x[0]), math.log10(x[1])) if log_x else x
        self._y = y
        bottom = h - BOTTOM
        for t in _ticks(*y) if labels[1] else []:  # no y label (the timeline): no y axis
            self.line(LEFT, self.y(t), W - RIGHT, self.y(t), "grid")
            self.text(LEFT - 6, self.y(t) + 4, _fmt(t), "end")
        for t in [10**e for e in _ticks(*self._x, n=4) if e == int(e)] if log_x else _ticks(*x):
            self.text(self.x(t), bottom + 16, _fmt(t))
        self.line(LEFT, bottom, W - RIGHT, bottom, "axis")
        self.text((LEFT + W - RIGHT) / 2, h - 6, labels[0], cls="label")
        self.text(14, TOP + (bottom - TOP) / 2, labels[1], cls="ylabel")

    def line(self, x1: float, y1: float, x2: float, y2: float, cls: str) -> None:
        self.shapes.append({"kind": "line", "x1": x1, "y1": y1, "x2": x2, "y2": y2, "cls": cls})

    def rect(self, x: float, y: float, w: float, h: float, fill: str, tip: str) -> None:
        self.shapes.append({"kind": "rect", "x": x, "y": y, "w": w, "h": h, "fill": fill, "tip": tip})

    def text(self, x: float, y: float, s: str, anchor: str = "middle", cls: str = "tick") -> None:
        self.shapes.append({"kind": "text", "x": x, "y": y, "s": s, "anchor": anchor, "cls": cls})

    def x(self, v: float) -> float:
        lo, hi = self._x
        v = math.log10(max(v, 10**lo)) if self.log_x else v
        return round(LEFT + (v - lo) / ((hi - lo) or 1) * (W - LEFT - RIGHT), 1)

    def y(self, v: float) -> float:
        lo, hi = self._y
        return round(self.h - BOTTOM - (v - lo) / ((hi - lo) or 1) * (self.h - BOTTOM - TOP), 1)


def histogram(
    series: dict[str, list[float]], colors: dict, xlabel: str, stacked: bool, span: Span | None = None
) -> Plot | None:
    """Stacked (parts of one population) or side-by-side (populations compared) bars; log x when values span 30x."""
    series = {name: values for name, values in series.items() if values}
    if not series:
        return None
    lo, hi = span or (min(min(v) for v in series.values()), max(max(v) for v in series.values()))
    hi = max(hi, lo + 1)
    log = lo > 0 and hi / lo > 30
    edges = [
        10 ** (math.log10(lo) + math.log10(hi / lo) * i / BINS) if log else lo + (hi - lo) * i / BINS
        for i in range(BINS + 1)
    ]
    counts = {
        name: Counter(min(sum(v >= e for e in edges[1:-1]), BINS - 1) for v in vs) for name, vs in series.items()
    }
    heights = [(sum if stacked else max)(c[i] for c in counts.values()) for i in range(BINS)]
    plot = Plot((lo, hi), (0, max(heights) * 1.08), (xlabel, "documents"), log_x=log)
    for i in range(BINS):
        x0, x1, base = plot.x(edges[i]) + 0.5, plot.x(edges[i + 1]) - 0.5, 0
        part = (x1 - x0) if stacked else (x1 - x0) / len(counts)
        for j, (name, c) in enumerate(counts.items()):
            if c[i]:
                top, xa = (base + c[i], x0) if stacked else (c[i], x0 + j * part)
                tip = f"{name}: {c[i]} in [{edges[i]:.3g}, {edges[i + 1]:.3g})"
                plot.rect(xa, plot.y(top), max(part, 0.5), plot.y(top - c[i]) - plot.y(top), colors[name], tip)
                base += c[i] if stacked else 0
    plot.legend = [(f"{name} ({len(vs)})", colors[name]) for name, vs in series.items()]
    return plot


def scatter(points: list[tuple[float, float]], labels: tuple[str, str], cap: int | None) -> Plot | None:
    """Rewrite length against source length, with y = x and the generation cap drawn for reference."""
    if not points:
        return None
    hi = max(max(p) for p in points) * 1.05
    plot = Plot((0, hi), (0, hi), labels)
    plot.line(plot.x(0), plot.y(0), plot.x(hi), plot.y(hi), "ref")
    plot.text(plot.x(hi) - 4, plot.y(hi) + 14, "y = x", "end", "note")
    if cap and cap < hi:
        plot.line(plot.x(0), plot.y(cap), plot.x(hi), plot.y(cap), "cap")
        plot.text(plot.x(0) + 4, plot.y(cap) - 4, f"max_tokens {cap}", "start", "note")
    plot.shapes += [{"kind": "dot", "x": plot.x(a), "y": plot.y(b), "tip": f"{a:g} -> {b:g}"} for a, b in points]
    return plot


def timeline(tasks: list[dict]) -> Plot | None:
    """Each datatrove task as a bar on the wall clock, labelled with its LLM output throughput."""
    if not tasks:
        return None
    t0 = min(t["start"] for t in tasks)
    end = max((t["end"] - t0).total_seconds() for t in tasks) or 1.0
    h = BOTTOM + TOP + 34 * len(tasks)
    plot = Plot((0, end * 1.02), (0, len(tasks)), ("seconds since the first task started", ""), h=h)
    for i, t in enumerate(tasks):
        y0, y1 = plot.y(len(tasks) - i) + 4, plot.y(len(tasks) - i - 1) - 4
        a, b = plot.x((t["start"] - t0).total_seconds()), plot.x((t["end"] - t0).total_seconds())
        fill = COLORS["rephrase" if t["stage"] == "curate" else "keep"]  # the LLM runs in curate
        plot.rect(a, y0, max(b - a, 1.5), y1 - y0, fill, t["label"])
        label, mid = f"{t['label']} · {t['note']}", (y0 + y1) / 2 + 4
        if b - a > 230:  # the label fits inside the bar, else it goes on the side with more room
            plot.text(a + 6, mid, label, "start", "barlabel")
        else:
            plot.text(*((b + 6, mid, label, "start") if b < W / 2 else (a - 6, mid, label, "end")), cls="label")
    return plot
