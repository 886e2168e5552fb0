"""Random valid ONNX graphs for differential testing of passes (tests/fuzz, bench.fuzz_differential)."""
