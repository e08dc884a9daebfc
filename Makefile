# Two commands matter: `make demo` and `make test`. Each creates .venv and installs nnzip into it
# on first use (pip, not uv/poetry: only pip sees the local CPU torch wheel; torch is pinned).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
BENCH_STAMP := $(VENV)/.bench-stamp

.PHONY: install system demo test bench lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev,bench]'
	touch $(BENCH_STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/nnzip demo

# Debian packages some tests need (PostgreSQL for the distributed search, Chromium for the
# report's browser test): installed when missing and running as root, otherwise those tests
# skip and say how to install them.
system:
	.ci/setup-system

test: $(STAMP) system
	$(PY) -m pytest -q

bench: $(BENCH_STAMP)
	$(PY) benchmarks/zoo_mnist.py
	$(PY) benchmarks/latency_stability.py
	$(PY) benchmarks/prune_unstructured.py
	$(PY) benchmarks/prune_structured.py
	$(PY) benchmarks/quant_ptq.py
	$(PY) benchmarks/quant_better_ptq.py
	$(PY) benchmarks/quant_runtime.py
	$(PY) benchmarks/quant_qat.py
	$(PY) benchmarks/quant_mixed.py
	$(PY) benchmarks/distill_mnist.py
	$(PY) benchmarks/factorize_mnist.py
	$(PY) benchmarks/share_deep_compression.py
	$(PY) benchmarks/energy_estimate.py
	$(PY) benchmarks/shift_mnist.py
	$(PY) benchmarks/hf_quant.py
	$(PY) benchmarks/hf_prune.py
	$(PY) benchmarks/hf_save.py
	$(PY) benchmarks/minilm_recipe.py
	$(PY) benchmarks/lm_stsb.py
	$(PY) benchmarks/vit_mnist.py
	$(PY) benchmarks/integer_graph.py
	$(PY) benchmarks/deploy_openvino.py
	$(PY) benchmarks/minilm_deploy.py
	$(PY) benchmarks/deploy_peers.py
	$(PY) benchmarks/search_lenet5.py --trials 40
	$(PY) benchmarks/search_lenet5.py --curve --trials 24
	$(PY) benchmarks/search_workers.py
	$(PY) benchmarks/search_resnet20.py
	$(PY) benchmarks/coverage.py

lint: $(STAMP)
	$(VENV)/bin/ruff check nnzip tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache *.egg-info
