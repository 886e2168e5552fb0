"""graphopt passes: one rewrite per module, each registered by name on import.

Every module in this package is imported (in sorted order, so registration is deterministic);
adding a pass is adding a file. `graphopt passes` lists what is registered.
"""

from __future__ import annotations

import importlib
import pkgutil

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if not _module.startswith("_"):
        importlib.import_module(f"{__name__}.{_module}")
