"""graphopt: compiler-style graph rewriting for efficient transformer inference.

    import graphopt
    result = graphopt.compile("model.onnx", passes="canonicalize")
    result.save("out/")

Heavy dependencies (torch, tvm, onnxruntime) load only when a function needs them.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["check", "compile", "finetune", "load", "run_pipeline", "save", "to_torch", "__version__"]


def __getattr__(name: str):
    # Lazy: `graphopt --help` must not pay for onnx/onnxruntime imports.
    if name == "compile":
        from graphopt.api import compile as value
    elif name == "check":
        from graphopt.gate import check as value  # not graphopt/check.py: that module would shadow the function
    elif name == "load":
        from graphopt.capture import load as value
    elif name == "save":
        from graphopt.storage import save_model as value
    elif name == "run_pipeline":
        from graphopt.pipeline import run_pipeline as value
    elif name == "finetune":
        from graphopt.finetuning import finetune as value  # a package of another name: importing it never shadows this
    elif name == "to_torch":
        from graphopt.fx import to_torch as value
    else:
        raise AttributeError(f"module 'graphopt' has no attribute {name!r}")
    return value
