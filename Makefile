# The README's two commands: `make demo` and `make test`. Each sets up .venv on its own, at the exact
# versions of constraints.txt (pyproject.toml's extras declare ranges; make test-oldest tries their lower bounds).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt
export TF_CPP_MIN_LOG_LEVEL := 3

.PHONY: demo test test-oldest chromium benchmark benchmark-maps benchmark-adapters benchmark-report benchmark-heatmaps benchmark-training benchmark-visualize benchmark-memory benchmark-dataset benchmark-compare benchmark-device benchmark-evaluate clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Keras 3 on TensorFlow (CPU): everything the demo needs.
$(VENV)/.demo-deps: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) -e '.[keras]'
	touch $@

# Adds torch (the second Keras backend, and PyTorch models), JAX (the third), ONNX Runtime, LiteRT,
# the test runner, the browser driver and Ray (the dataset view's Ray engine runs on a local cluster).
$(VENV)/.test-deps: pyproject.toml $(VENV)/.demo-deps
	$(PIP) -e '.[keras,keras-torch,keras-jax,torch,onnx,onnx-gradients,tflite,training,ray,test]'
	touch $@

demo: $(VENV)/.demo-deps
	KERAS_BACKEND=tensorflow $(BIN)/convlens demo --out demo-output

# Debian's Chromium drives the HTML report tests (Playwright never downloads a browser here).
chromium:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }

# Static checks on src/ (rules in pyproject.toml), the whole suite on Keras's TensorFlow backend,
# then every Keras test again on its torch backend, then the Keras gradient and agreement tests
# (marker "gradients") on its JAX backend.
test: $(VENV)/.test-deps chromium
	$(BIN)/ruff check src
	$(BIN)/mypy
	KERAS_BACKEND=tensorflow $(BIN)/python -m pytest
	KERAS_BACKEND=torch $(BIN)/python -m pytest -m keras
	KERAS_BACKEND=jax $(BIN)/python -m pytest -m "keras and gradients"

# The torch and Keras tests (Keras on TensorFlow, then its torch backend) at the lowest versions the extras
# declare (constraints-oldest.txt), in a venv of their own.
OLDEST       := .venv-oldest
OLDEST_TESTS := tests/adapters/test_torch.py tests/adapters/test_keras.py tests/adapters/test_keras_free_size.py \
                tests/adapters/test_gradients.py tests/adapters/test_final_activation.py \
                tests/methods/test_frameworks.py tests/methods/test_input_sums.py \
                tests/test_training_torch.py tests/test_training_keras.py

$(OLDEST)/bin/python:
	$(PYTHON) -m venv $(OLDEST)
	$(OLDEST)/bin/pip install --quiet --disable-pip-version-check -U pip  # an old pip's resolver gives up here

$(OLDEST)/.deps: pyproject.toml constraints-oldest.txt | $(OLDEST)/bin/python
	$(OLDEST)/bin/pip install --quiet --disable-pip-version-check -c constraints-oldest.txt \
		-e '.[keras,keras-torch,torch,onnx,tflite,training,test]'
	touch $@

test-oldest: $(OLDEST)/.deps
	$(OLDEST)/bin/python -c "import importlib.metadata as m; print('oldest:', ', '.join(f'{p} {m.version(p)}' \
		for p in ('torch', 'torchvision', 'keras', 'tensorflow-cpu', 'numpy')))"
	KERAS_BACKEND=tensorflow $(OLDEST)/bin/python -m pytest -p no:cacheprovider $(OLDEST_TESTS)
	KERAS_BACKEND=torch $(OLDEST)/bin/python -m pytest -p no:cacheprovider -m keras $(OLDEST_TESTS)

benchmark: benchmark-maps benchmark-adapters benchmark-report benchmark-heatmaps benchmark-training benchmark-visualize benchmark-memory benchmark-dataset benchmark-compare benchmark-evaluate

benchmark-maps: $(VENV)/.test-deps
	KERAS_BACKEND=tensorflow $(BIN)/python benchmarks/bench_maps.py

benchmark-adapters: $(VENV)/.test-deps
	KERAS_BACKEND=tensorflow $(BIN)/python benchmarks/bench_adapters.py

benchmark-report: $(VENV)/.test-deps
	KERAS_BACKEND=tensorflow $(BIN)/python benchmarks/bench_report.py

# Speed against the forward pass, pytorch-grad-cam and captum; the sanity check's curve;
# deletion/insertion faithfulness on held-out digits.
benchmark-heatmaps: $(VENV)/.test-deps
	KERAS_BACKEND=tensorflow $(BIN)/python benchmarks/bench_heatmaps.py
	KERAS_BACKEND=tensorflow $(BIN)/python benchmarks/bench_sanity.py
	KERAS_BACKEND=tensorflow $(BIN)/python benchmarks/bench_faithfulness.py
	$(BIN)/python benchmarks/bench_detector.py

# The demo CNN trained for 3 epochs with and without the LensCallback (target: at most 5% slower).
benchmark-training: $(VENV)/.test-deps
	KERAS_BACKEND=tensorflow $(BIN)/python benchmarks/bench_training.py

# References that only the benchmarks need (torch-lucent for benchmark-visualize).
$(VENV)/.bench-deps: pyproject.toml $(VENV)/.test-deps
	$(PIP) -e '.[keras,keras-torch,keras-jax,torch,onnx,onnx-gradients,tflite,training,ray,test,bench]'
	touch $@

# Feature visualisation: quality against naive gradient ascent, speed against torch-lucent 0.1.8.
benchmark-visualize: $(VENV)/.bench-deps
	KERAS_BACKEND=tensorflow $(BIN)/python benchmarks/bench_visualize.py

# Peak memory of maps and stats on a 4000x3000 photo against model + 2 x the largest selected output.
benchmark-memory: $(VENV)/.test-deps
	KERAS_BACKEND=tensorflow $(BIN)/python benchmarks/bench_memory.py

# The dataset view: the batched forward pass alone (the floor) vs convlens dataset local vs Ray with
# 1 and 2 model actors, on the demo CNN (5,000 digits) and ResNet-18 (1,000 photos at 224 px), and
# peak RSS at 1,000 and 10,000 images (targets: local within 1.25x of the floor, Ray within 1.5x of local).
benchmark-dataset: $(VENV)/.test-deps
	KERAS_BACKEND=tensorflow $(BIN)/python benchmarks/bench_dataset.py

# convlens compare: VGG16 PyTorch vs ONNX (16 images) against the two bare forward passes (target <= 1.3x),
# and peak RSS of CKA over 100 vs 1,000 images on ResNet-18 in fresh processes (target within 10%).
benchmark-compare: $(VENV)/.test-deps
	KERAS_BACKEND=tensorflow $(BIN)/python benchmarks/bench_compare.py

clean:
	rm -rf $(VENV) $(OLDEST) demo-output

# convlens on a GPU against the CPU (ResNet-50): run on a machine with CUDA; on a CPU-only machine
# it runs the CPU rows only and says so
benchmark-device: $(VENV)/.test-deps
	$(BIN)/python benchmarks/bench_device.py

# convlens evaluate on ResNet-18 against Quantus 0.6 (smaller: ARGS="--images 4 --size 112")
benchmark-evaluate: $(VENV)/.test-deps
	KERAS_BACKEND=tensorflow $(BIN)/python benchmarks/bench_evaluate.py $(ARGS)
