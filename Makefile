# Two commands for a fresh machine: `make demo` and `make test`. Both set up .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.visionkit-installed
TASK ?= cls
# torch is not pinned in the package metadata; this is the build installed here (override as needed).
TORCH ?= torch==2.14.1 torchvision==0.29.1
PLUGINS := $(wildcard plugins/*/pyproject.toml)

.PHONY: install browser demo test lint bench bench-det bench-inst docs-check gpu-check clean

install: $(STAMP)

# Only the metadata is a prerequisite: the default configs in configs/ are package data (visionkit/configs
# once installed), which the editable install reads in place (a regular install or wheel copies them in).
$(STAMP): pyproject.toml setup.py $(PLUGINS)
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev]' $(foreach p,$(dir $(PLUGINS)),-e $(p))
	@$(MAKE) --no-print-directory browser
	@touch $(STAMP)

# Debian's chromium for the serve page's browser test (Playwright drives it; nothing is downloaded by Playwright).
# Where apt cannot install it, the test is skipped and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && \
	  { apt-get install -y -q chromium >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; }; }; } || \
	  echo "note: chromium could not be installed; the browser test of visionkit serve will be skipped"

demo: $(STAMP)
	$(PY) tools/train.py --task $(TASK) $(ARGS)

test: $(STAMP)
	$(PY) -m ruff check visionkit tools tests plugins benchmarks
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check visionkit tools tests plugins benchmarks
	$(VENV)/bin/lint-imports

bench: $(STAMP)
	$(PY) -c "import lightning" 2>/dev/null || $(PY) -m pip install -q -e '.[bench]'
	$(PY) benchmarks/trainer_overhead.py
	$(PY) benchmarks/startup.py $(if $(PEER_BIN),--peer-bin $(PEER_BIN))
	rm -rf runs/bench-serve && $(PY) tools/train.py --task seg trainer.max_steps=2 trainer.progress=false --work-dir runs/bench-serve
	$(PY) benchmarks/serve_load.py runs/bench-serve --requests 2000 --clients 8 --batches 1,8 --faults

# Detection peers (docs/benchmarks.md#detection-peers-benchmarksdet_peerspy), ~10 min on 2 CPU cores; add
# ARGS="--peer-python /path/to/venv/bin/python" to include Ultralytics YOLOv8n from a scratch environment.
bench-det: $(STAMP)
	$(PY) benchmarks/det_peers.py $(ARGS)

# Instance segmentation recipes (docs/benchmarks.md#instance-segmentation-benchmarksinstancepy), ~45 min on 2 CPU
# cores; ARGS="--only default" for the default recipe alone (~12 min).
bench-inst: $(STAMP)
	$(PY) benchmarks/instance.py $(ARGS)

# Every command of docs/finetune.md run as written, each figure it quotes checked (~7 min on 2 CPU cores).
docs-check: $(STAMP)
	$(PY) benchmarks/docs_finetune.py $(ARGS)

# The GPU check (docs/benchmarks.md#gpu-check-benchmarksgpu_checkpy): gpu-check.json and gpu-check.md; ARGS=--cpu without a GPU.
gpu-check: $(STAMP)
	$(PY) benchmarks/gpu_check.py --out gpu-check.json $(ARGS)

clean:
	rm -rf runs predictions .pytest_cache det_peers det_peers.json instance_bench instance.json
