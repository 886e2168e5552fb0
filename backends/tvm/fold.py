"""Static-value folding before the TVM import: the registered pass ``fold-static-values``
(``graphopt.passes.fold_static_values``), applied by the importer once input shapes are static."""

from __future__ import annotations

from graphopt.passes.fold_static_values import fold_static_values

__all__ = ["fold_static_values"]
