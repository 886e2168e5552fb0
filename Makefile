# graphopt — `make demo` and `make test` work on a fresh clone (they create .venv if missing).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
OUT ?= out
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test test-fast bench conformance fuzz clean

$(STAMP): requirements.txt pyproject.toml backends/tvm/edge/install_toolchain.sh
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	bash backends/tvm/edge/install_toolchain.sh $(PY)  # aarch64 cross g++, qemu-user, aarch64 TVM runtime
	touch $(STAMP)

install: $(STAMP)

# Build the embedded default model (digits ViT + its test images as calibration data),
# rewrite it with the canonicalize pipeline and print the report.
demo: $(STAMP)
	$(PY) -m graphopt.models digits-vit $(OUT)/demo-input
	$(VENV)/bin/graphopt compile $(OUT)/demo-input/digits-vit.onnx --calib $(OUT)/demo-input/digits-vit.calib.npz \
		--passes canonicalize -o $(OUT)/demo

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider tests

test-fast: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -m "not slow" tests

conformance: $(STAMP)
	$(PY) -m graphopt.conformance --passes canonicalize

# Long fuzz runs (a bounded, seeded share of each runs in `make test`): every pass on generated
# graphs (declines or preserves outputs), and byte-mutated models through the real CLI.
fuzz: $(STAMP)
	$(PY) -m bench.fuzz_differential --cases 2000
	$(PY) -m bench.fuzz_loader --cases 5000

# The README's numbers on this host (`graphopt bench --list`: every benchmark; installed users run the same).
bench: $(STAMP)
	$(VENV)/bin/graphopt bench overhead minilm-canonical ivit sparsity
	$(VENV)/bin/graphopt bench tvm --cross
	$(VENV)/bin/graphopt bench attention

clean:
	rm -rf $(OUT) graphopt-out .pytest_cache
