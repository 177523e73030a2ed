# detzoo developer commands. Everything runs in ./.venv, created on first use.
#   make install     venv + torch + detzoo (editable, with the compiled ops); quick when nothing changed
#   make test        install, then the test suite (excludes tests marked slow)
#   make test-slow   the long end-to-end tests
#   make build-cuda  compile the CUDA kernels (FORCE_CUDA=1) into build/cuda to prove they build
#   make benchmark   op timings against torchvision
#   make demo        install, train a small Mask R-CNN on the synthetic shapes dataset on CPU,
#                    evaluate it, and draw its predictions and training curves into output/demo/

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_SPEC := torch==2.14.1 torchvision==0.29.1
CSRC := $(shell find csrc -type f 2>/dev/null)
# pycocotools etc. compile against numpy; torch's CUDA headers need the cuBLAS/cuSPARSE headers
# that come with torch's pip dependencies.
NV_INCLUDE = $(shell $(PY) -c "import os, nvidia; p=os.path.join(list(nvidia.__path__)[0], 'cu13', 'include'); print(p if os.path.isdir(p) else '')" 2>/dev/null)

.PHONY: install test test-slow build-cuda benchmark demo clean

$(VENV)/.stamp-venv:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip "setuptools>=64" wheel
	touch $@

$(VENV)/.stamp-torch: $(VENV)/.stamp-venv
	$(PIP) install -q $(TORCH_SPEC)
	touch $@

$(VENV)/.stamp-deps: $(VENV)/.stamp-torch setup.py pyproject.toml
	DETZOO_SKIP_EXTENSIONS=1 $(PIP) install -q --no-build-isolation -e ".[dev]"
	touch $@

# The one compilation of the extensions (pip skipped them above); ninja rebuilds only the
# changed sources when csrc/ changes.
$(VENV)/.stamp-ext: $(VENV)/.stamp-deps $(CSRC)
	$(PY) setup.py -q build_ext --inplace
	touch $@

install: $(VENV)/.stamp-ext

test: install
	$(PY) -m pytest -q -ra tests

test-slow: install
	$(PY) -m pytest -q -ra -m slow tests

build-cuda: install
	CPATH="$(NV_INCLUDE)$${CPATH:+:$$CPATH}" FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="$${TORCH_CUDA_ARCH_LIST:-9.0}" \
	  MAX_JOBS=2 $(PY) setup.py build_ext --build-lib build/cuda/lib --build-temp build/cuda/tmp
	@echo "CUDA build OK: $$(ls build/cuda/lib/detzoo/_C*.so)"

benchmark: install
	$(PY) tools/benchmark.py --task ops

DEMO_CONFIG := configs/quick_schedules/detzoo/mask_rcnn_R_18_FPN_shapes_demo.yaml
DEMO_DIR := output/demo
# The demo trains on the CPU in DEMO_PROCS processes (gloo; the config's batch of 2 is one image
# per process): on 2 cores, 2 one-thread processes go through ~1.3x more images per second
# than one process with 2 threads, and the demo model learns as well from batches of 2.
# CUDA_VISIBLE_DEVICES is emptied so that it stays a CPU run on machines with GPUs.
# shapes_train / shapes_val are generated into ./datasets/shapes on first use.
DEMO_PROCS ?= 2
demo: install
	CUDA_VISIBLE_DEVICES= $(PY) tools/train_net.py --num-gpus $(DEMO_PROCS) --config-file $(DEMO_CONFIG) \
	  OUTPUT_DIR $(DEMO_DIR)
	$(PY) tools/plot_training_curves.py $(DEMO_DIR)/metrics.json --output $(DEMO_DIR)/training_curves.png \
	  --title "Mask R-CNN R18-FPN on shapes_train (CPU)"
	$(PY) demo/demo.py --config-file $(DEMO_CONFIG) --input "datasets/shapes/instances_val/images/00000*.jpg" \
	  --output $(DEMO_DIR)/predictions --confidence-threshold 0.5 --opts MODEL.WEIGHTS $(DEMO_DIR)/model_final.pth
	@echo "demo done: AP tables above; pictures in $(DEMO_DIR)/predictions, curves in $(DEMO_DIR)/training_curves.png"

clean:
	rm -rf build detzoo/_C*.so $(VENV)/.stamp-ext
