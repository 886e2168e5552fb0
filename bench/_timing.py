"""Timing shared by the benchmarks: runners timed interleaved, so that load drifts hit all alike."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

PAUSE_S = 0.05


def interleaved_medians(runners: dict[str, Callable[[], object]], runs: int, per_round: int = 5) -> dict[str, float]:
    """Median ms of each runner, alternating runners every ``per_round`` calls so load drifts hit all alike.

    Each block starts after a short pause: ORT's and TVM's thread pools spin for a while after a
    call and would otherwise steal the cores from the next runner."""
    for run in runners.values():  # warm up
        run()
        run()
    samples: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(max(1, runs // per_round)):
        for name, run in runners.items():
            time.sleep(PAUSE_S)
            for _ in range(per_round):
                start = time.perf_counter()
                run()
                samples[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(values) for name, values in samples.items()}
