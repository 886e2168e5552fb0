"""The loss curve as a PNG next to report.json (matplotlib, Agg; no date in the file)."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["write_loss_png"]


def write_loss_png(path: str, losses: Sequence[float], *, title: str = "") -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt  # noqa: PLC0415

    figure, axes = plt.subplots(figsize=(6.4, 3.2), dpi=100)
    axes.plot(range(1, len(losses) + 1), losses, color="#2e86c1", linewidth=1.2)
    positive = all(v > 0 for v in losses)
    if positive and max(losses) > 20 * min(losses):  # a loss that falls by orders of magnitude reads better on a log axis
        axes.set_yscale("log")
    axes.set_xlabel("step")
    axes.set_ylabel("distillation loss")
    if title:
        axes.set_title(title, fontsize=9)
    axes.spines[["top", "right"]].set_visible(False)
    figure.savefig(path, format="png", bbox_inches="tight", metadata={"Software": None})
    plt.close(figure)
