"""The loss curve: a PNG next to report.json (``loss.png``) and inline SVG in report.html
(matplotlib, Agg, through ``report_plots``' settings: no date in either file)."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["loss_svg", "write_loss_png"]


def _figure(losses: Sequence[float], title: str = ""):
    from graphopt.report_plots import COLORS, WIDTH, _pyplot  # noqa: PLC0415

    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(WIDTH, 3.0), dpi=100)
    axes.plot(range(1, len(losses) + 1), losses, color=COLORS["ok"], linewidth=1.2)
    if all(v > 0 for v in losses) and max(losses) > 20 * min(losses):  # a loss falling by orders of magnitude reads better on a log axis
        axes.set_yscale("log")
    axes.set_xlabel("step")
    axes.set_ylabel("distillation loss (global batch)")
    if title:
        axes.set_title(title, fontsize=9)
    axes.spines[["top", "right"]].set_visible(False)
    return figure


def write_loss_png(path: str, losses: Sequence[float], *, title: str = "") -> None:
    from graphopt.report_plots import _pyplot  # noqa: PLC0415

    figure = _figure(losses, title)
    figure.savefig(path, format="png", bbox_inches="tight", metadata={"Software": None})
    _pyplot().close(figure)


def loss_svg(losses: Sequence[float]) -> str:
    from graphopt.report_plots import _svg  # noqa: PLC0415

    return _svg(_figure(losses)) if losses else ""
