"""The report's plots as inline SVG (matplotlib, Agg): per-layer error, latency, sparsity.

Each function takes plain report data and returns an ``<svg>`` string (or "" when there is nothing
to plot), so the HTML report embeds it and needs no network and no files beside it. Text is drawn
as paths (no font needed to view it) and the output is deterministic (fixed hash salt, no date).
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence

__all__ = ["latency_svg", "layer_error_svg", "sparsity_svg"]

WIDTH = 8.0  # inches at 72 dpi in SVG units: about 580 px, the report's column width
BAR_HEIGHT = 0.28  # inches per horizontal bar
COLORS = {"bad": "#c0392b", "ok": "#2e86c1", "base": "#7f8c8d", "target": "#34495e"}


def _pyplot():
    import matplotlib  # noqa: PLC0415 — matplotlib only when a report is written as HTML

    matplotlib.use("Agg", force=True)
    matplotlib.rcParams.update({"svg.hashsalt": "graphopt", "svg.fonttype": "path", "font.size": 9})
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


def _svg(figure) -> str:
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None, "Creator": None})
    _pyplot().close(figure)
    text = buffer.getvalue()
    return text[text.index("<svg"):]  # drop the XML prolog and DOCTYPE: the SVG goes inline in HTML


def _short(label: str, width: int = 48) -> str:
    return label if len(label) <= width else "…" + label[-(width - 1):]


def layer_error_svg(layers: Sequence[Mapping], *, floor_db: float | None = None) -> str:
    """SQNR (dB) of every quantized value in graph order; points under ``floor_db`` in red."""
    rows = [row for row in layers if row.get("sqnr_db") is not None]
    if not rows:
        return ""
    plt = _pyplot()
    values = [min(float(row["sqnr_db"]), 120.0) for row in rows]  # exact values (inf SQNR) drawn at the top
    figure, axes = plt.subplots(figsize=(WIDTH, 2.8))
    colors = [COLORS["bad"] if floor_db is not None and v < floor_db else COLORS["ok"] for v in values]
    axes.bar(range(len(values)), values, color=colors, width=0.8)
    if floor_db is not None:
        axes.axhline(floor_db, color=COLORS["bad"], linestyle="--", linewidth=0.8, label=f"{floor_db:g} dB")
        axes.legend(loc="upper right", frameon=False)
    worst = min(range(len(values)), key=values.__getitem__)
    axes.annotate(_short(str(rows[worst]["value"]), 40), (worst, values[worst]), xytext=(0, 12), textcoords="offset points",
                  ha="center", fontsize=7, arrowprops={"arrowstyle": "-", "linewidth": 0.5})
    axes.set_xlabel(f"quantized value, in graph order ({len(values)})")
    axes.set_ylabel("SQNR vs original (dB)")
    axes.set_xlim(-0.8, len(values) - 0.2)
    axes.spines[["top", "right"]].set_visible(False)
    return _svg(figure)


def latency_svg(latency: Mapping[str, Mapping]) -> str:
    """Median latency per run (original, onnx, each target) with the p10–p90 spread as whiskers."""
    names = [name for name, t in latency.items() if t.get("median_ms")]
    if not names:
        return ""
    plt = _pyplot()
    medians = [float(latency[n]["median_ms"]) for n in names]
    low = [max(m - float(latency[n].get("p10_ms", m)), 0.0) for n, m in zip(names, medians, strict=True)]
    high = [max(float(latency[n].get("p90_ms", m)) - m, 0.0) for n, m in zip(names, medians, strict=True)]
    figure, axes = plt.subplots(figsize=(WIDTH, 0.6 + BAR_HEIGHT * 1.6 * len(names)))
    colors = [COLORS["base"] if n == "original" else COLORS["target"] for n in names]
    axes.barh(range(len(names)), medians, xerr=[low, high], color=colors, height=0.6, capsize=3)
    base = latency.get("original", {}).get("median_ms")
    for y, (name, median) in enumerate(zip(names, medians, strict=True)):
        ratio = f"  {base / median:.2f}x" if base and name != "original" else ""
        axes.text(median + high[y], y, f" {median:.3g} ms{ratio}", va="center", fontsize=8)
    axes.set_yticks(range(len(names)), [_short(n, 30) for n in names])
    axes.invert_yaxis()
    axes.set_xlabel("median latency (ms); whiskers p10–p90")
    axes.set_xlim(0, max(m + h for m, h in zip(medians, high, strict=True)) * 1.35)
    axes.spines[["top", "right"]].set_visible(False)
    return _svg(figure)


def sparsity_svg(tensors: Sequence[Mapping]) -> str:
    """Achieved sparsity per thresholded tensor (bars) against its target (ticks)."""
    rows = [row for row in tensors if row.get("achieved") is not None and math.isfinite(float(row["achieved"]))]
    if not rows:
        return ""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(WIDTH, 0.6 + BAR_HEIGHT * len(rows)))
    achieved = [100 * float(row["achieved"]) for row in rows]
    axes.barh(range(len(rows)), achieved, color=COLORS["ok"], height=0.7, label="achieved")
    targets = [(y, 100 * float(row["target"])) for y, row in enumerate(rows) if row.get("target") is not None]
    if targets:
        axes.scatter([t for _, t in targets], [y for y, _ in targets], marker="|", s=120, color=COLORS["bad"], label="target", zorder=3)
    axes.set_yticks(range(len(rows)), [_short(str(row["site"]), 40) for row in rows], fontsize=7)
    axes.invert_yaxis()
    axes.set_xlim(0, 100)
    axes.set_xlabel("zeros in the tensor on the validation samples (%)")
    axes.legend(loc="lower right", frameon=False)
    axes.spines[["top", "right"]].set_visible(False)
    return _svg(figure)
