# skipgan-edge: two commands on a fresh machine.
#   make demo   installs into .venv, then runs the whole job on built-in synthetic data
#   make test   installs into .venv, then runs the CPU test suite (what CI runs)
#
# Variables a user may override:
#   PYTHON      the interpreter that creates .venv            (default: python3)
#   TORCH_SPEC  the torch requirement                         (default: torch==2.13.0, the CPU build here)
#               e.g. on a CUDA workstation: make demo TORCH_SPEC='torch==2.13.0' with your CUDA wheel index
#               configured for pip (PIP_EXTRA_INDEX_URL), or a local wheel path.
#   PYTEST_ARGS extra pytest arguments

PYTHON ?= python3
TORCH_SPEC ?= torch==2.13.0
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

# nvidia-modelopt[onnx] pins onnxruntime-gpu (and pulls CUDA wheels, cupy and another torch) on
# x86-64 Linux. We install modelopt without its dependencies and give it what its ONNX path
# imports, resolved against the CPU onnxruntime on purpose: the same Q/DQ and AutoCast code runs,
# and ONNX Runtime's CPU provider executes the results for the accuracy gate.
MODELOPT_SPEC := nvidia-modelopt==0.47.0
MODELOPT_DEPS := 'onnx~=1.21.0' 'onnxruntime~=1.24.2' 'onnxscript>=0.5' 'onnx-graphsurgeon>=0.6.1' \
  'onnxconverter-common~=1.16.0' 'onnxslim>=0.1.76' 'polygraphy>=0.53.4' ml_dtypes cppimport lief \
  ninja 'nvidia-ml-py>=12' 'setuptools>=80' PyYAML 'omegaconf>=2.3' 'pulp<4' 'pydantic>=2' regex rich scipy tqdm
DEV_DEPS := 'pytest>=8' 'hypothesis>=6' 'scikit-learn>=1.3' 'mypy>=1.10' 'ruff>=0.5' 'cuda-python>=12.6.1' 'openvino>=2024.0' 'paho-mqtt>=2.0,<3' 'prometheus-client>=0.20' 'jsonschema>=4'
DEBS := dataset-fashion-mnist mosquitto python3.11-venv python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base \
  gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly gstreamer1.0-libav gstreamer1.0-tools python3-opencv \
  aravis-tools libaravis-0.8-0 gir1.2-aravis-0.8

# The runtime on a Jetson (JetPack 6): a --system-site-packages venv that sees JetPack's TensorRT, OpenCV (with
# GStreamer) and numpy, plus only what the system lacks (tools/jetson_install.py decides, requirement by requirement).
#   JETSON_PYTHON    the device's interpreter (default /usr/bin/python3: JetPack 6's Python 3.10)
#   JETSON_TENSORRT  required (default) | optional: CI runs the same recipe without TensorRT
JETSON_VENV ?= .venv-jetson
JETSON_PYTHON ?= /usr/bin/python3
JETSON_TENSORRT ?= required

# JetPack 6's userland emulated on any machine: a Python 3.10 venv with JetPack 6's pins (numpy 1, OpenCV 4.8,
# onnxruntime 1.21: constraints/jetpack6.txt) holding the runtime only. JP6_PYTHON: a Python 3.10 interpreter
# (default: the first found on PATH, in pyenv, or /usr/bin).
JP6_PYTHON ?= $(shell tools/find_python.sh 3.10)
JP6_VENV := .venv-jp6

.PHONY: demo test test-gpu jetson jp6-venv jetson-ci lean-venv triton-venv test-slow lint typecheck venv debs bench bench-smoke bench-peers clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q '$(TORCH_SPEC)'
	$(PIP) install -q $(MODELOPT_DEPS) $(DEV_DEPS)
	$(PIP) install -q --no-deps $(MODELOPT_SPEC)
	# stubs only, outside site-packages: their stub-only 'tensorrt' folder would make 'import tensorrt'
	# succeed as an empty namespace package and fool every TensorRT detection (ours and Model Optimizer's)
	$(PIP) install -q --no-deps --upgrade --target $(VENV)/stubs 'tensorrt-stubs>=10.0'
	$(PY) tools/fix_trt_stubs.py $(VENV)/stubs
	$(PIP) install -q -e '.[train,triton]' --no-build-isolation
	$(PY) -c "import torch, onnx, onnxruntime, modelopt.onnx.quantization, cv2; print('environment ok: torch', torch.__version__, 'onnxruntime', onnxruntime.__version__)"
	touch $(STAMP)

venv: $(STAMP)

# Debian packages the tests use (Fashion-MNIST; Mosquitto, started by the MQTT tests on loopback; GStreamer's RTSP
# server for the RTSP source test; python3-opencv (GStreamer, numpy 1) under the emulated Jetson venv; Aravis's
# simulated GigE Vision camera and aravissrc for the genicam:// source).
debs:
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "warning: missing Debian packages:$$missing (run as root or: sudo apt-get install$$missing); the tests that need them are skipped"; fi; \
	fi

demo: $(STAMP)
	$(VENV)/bin/skipgan-edge demo --out demo_out

# The runtime-only install (pip install skipgan-edge: numpy, OpenCV, ONNX Runtime, Typer), editable so it runs
# this tree; tests/test_lean_install.py streams a model exported in .venv through it.
LEAN_VENV := .venv-lean
$(LEAN_VENV)/.installed: pyproject.toml
	test -x $(LEAN_VENV)/bin/python || $(PYTHON) -m venv $(LEAN_VENV)
	$(LEAN_VENV)/bin/python -m pip install -q --upgrade pip
	$(LEAN_VENV)/bin/python -m pip install -q -e .
	touch $@

lean-venv: $(LEAN_VENV)/.installed

# The Triton server's venv (skipgan-edge triton-serve; the tests start it): PyTriton's bundled tritonserver runs its
# Python-backend stub against the system's libpython, so this venv is made from the system's own python3.11, not from
# $(PYTHON) (a pyenv 3.11.7 standard library fails inside the stub).
TRITON_PYTHON ?= /usr/bin/python3.11
TRITON_VENV := .venv-triton
$(TRITON_VENV)/.installed: pyproject.toml | debs
	@test -x $(TRITON_PYTHON) || { echo "error: $(TRITON_PYTHON) not found: install the system's python3.11 and python3.11-venv (Debian 12), or set TRITON_PYTHON" >&2; exit 2; }
	test -x $(TRITON_VENV)/bin/python || $(TRITON_PYTHON) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/python -m pip install -q --upgrade pip
	$(TRITON_VENV)/bin/python -m pip install -q -e '.[triton-serve,openvino]'
	$(TRITON_VENV)/bin/python -c "import pytriton, tritonclient.grpc, onnxruntime, openvino, cv2; print('triton venv ok: PyTriton', pytriton.__version__)"
	touch $@

triton-venv: $(TRITON_VENV)/.installed

test: $(STAMP) $(LEAN_VENV)/.installed debs $(TRITON_VENV)/.installed $(JP6_VENV)/.installed $(JETSON_VENV)/.installed
	$(VENV)/bin/ruff check skipgan_edge tests benchmarks
	$(VENV)/bin/mypy skipgan_edge
	$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

# On a Jetson or GPU workstation with TensorRT and cuda-python installed in .venv. Never passes empty:
# a missing GPU, cuda-python or TensorRT is one line and a non-zero exit, and under SKIPGAN_REQUIRE_GPU=1
# the tests' skips become failures. It selects the tensorrt- and cuda-marked tests of every file (the backend parity
# test's TensorRT case in test_runtime.py builds its own engines); tests/test_gpu_target.py checks that selection.
test-gpu: $(STAMP)
	$(VENV)/bin/skipgan-edge doctor --require-gpu
	SKIPGAN_REQUIRE_GPU=1 $(VENV)/bin/python -m pytest -q -m "tensorrt or cuda" -o addopts="-ra" $(PYTEST_ARGS)

jetson:
	@test -x "$(JETSON_PYTHON)" || { echo "error: $(JETSON_PYTHON) not found: set JETSON_PYTHON to the device's python3" >&2; exit 2; }
	@"$(JETSON_PYTHON)" -c "import sys; sys.exit(sys.version_info < (3, 10))" || { echo "error: $(JETSON_PYTHON) is Python $$("$(JETSON_PYTHON)" -c 'import platform; print(platform.python_version())'): skipgan-edge needs 3.10 or later (JetPack 6); JetPack 5 (Python 3.8, TensorRT 8.5.2) is not supported: upgrade to JetPack 6.1 or later" >&2; exit 2; }
	@"$(JETSON_PYTHON)" -c "import venv, ensurepip" 2>/dev/null || { echo "error: $(JETSON_PYTHON) cannot make venvs: sudo apt-get install python3-venv" >&2; exit 2; }
	@[ "$(JETSON_TENSORRT)" != required ] || "$(JETSON_PYTHON)" -c "import tensorrt" 2>/dev/null || { echo "error: JetPack's TensorRT Python bindings are missing: sudo apt-get install python3-libnvinfer (JetPack 6), or JETSON_TENSORRT=optional for the runtime without TensorRT" >&2; exit 2; }
	test -x $(JETSON_VENV)/bin/python || "$(JETSON_PYTHON)" -m venv --system-site-packages $(JETSON_VENV)
	JETSON_TENSORRT=$(JETSON_TENSORRT) $(JETSON_VENV)/bin/python tools/jetson_install.py
	$(JETSON_VENV)/bin/skipgan-edge doctor

# What make test builds: the Jetson recipe over Debian's GStreamer OpenCV and numpy 1, without TensorRT.
$(JETSON_VENV)/.installed: pyproject.toml tools/jetson_install.py | debs
	$(MAKE) --no-print-directory jetson JETSON_PYTHON=/usr/bin/python3.11 JETSON_TENSORRT=optional
	touch $@

jetson-ci: $(JETSON_VENV)/.installed

$(JP6_VENV)/.installed: pyproject.toml constraints/jetpack6.txt
	@test -n "$(JP6_PYTHON)" || { echo "error: no Python 3.10 found for the JetPack 6 lane: install one (pyenv install 3.10, or apt's python3.10) or set JP6_PYTHON" >&2; exit 2; }
	@"$(JP6_PYTHON)" -c "import sys; sys.exit(sys.version_info[:2] != (3, 10))" 2>/dev/null || { echo "error: JP6_PYTHON=$(JP6_PYTHON) is not a Python 3.10 interpreter (JetPack 6's): point it at one, or leave it unset to find one" >&2; exit 2; }
	test -x $(JP6_VENV)/bin/python || "$(JP6_PYTHON)" -m venv $(JP6_VENV)
	$(JP6_VENV)/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
	$(JP6_VENV)/bin/python -m pip install -q --disable-pip-version-check -c constraints/jetpack6.txt -e '.[metrics]'
	$(JP6_VENV)/bin/python -c "import sys, numpy; assert sys.version_info[:2] == (3, 10) and numpy.__version__.startswith('1.'), (sys.version, numpy.__version__)"
	touch $@

jp6-venv: $(JP6_VENV)/.installed

test-slow: $(STAMP) debs
	$(VENV)/bin/python -m pytest -q -m slow -o addopts="-ra" $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check skipgan_edge tests benchmarks

typecheck: $(STAMP)
	$(VENV)/bin/mypy skipgan_edge

clean:
	rm -rf $(VENV) $(LEAN_VENV) $(JP6_VENV) $(JETSON_VENV) $(TRITON_VENV) demo_out .pytest_cache .mypy_cache .ruff_cache

# Benchmarks (not part of make test). Results land in benchmarks/results/.
bench-smoke: $(STAMP)
	$(PY) benchmarks/bench_smoke.py

bench: $(STAMP)
	$(PY) benchmarks/cpu_peers.py
	$(PY) benchmarks/latency.py
	$(PY) benchmarks/pipeline.py
	$(PY) benchmarks/decode_threads.py
	$(PY) benchmarks/pipeline_runtimes.py
	$(PY) benchmarks/jetson_projection.py

# anomalib's GANomaly against ours on the same splits; anomalib lives in its own venv (.venv-peers)
PEERS_VENV := .venv-peers
$(PEERS_VENV)/.installed:
	test -x $(PEERS_VENV)/bin/python || $(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/pip install -q torch==2.14.1 torchvision==0.29.1
	$(PEERS_VENV)/bin/pip install -q 'anomalib==2.7.0'
	touch $@

bench-peers: $(STAMP) $(PEERS_VENV)/.installed debs
	$(PY) benchmarks/peers/splits.py
	$(PY) benchmarks/peers/ours.py 1 > benchmarks/peers/ours.log 2>&1 & \
	$(PEERS_VENV)/bin/python benchmarks/peers/anomalib_ganomaly.py 1 > benchmarks/peers/anomalib.log 2>&1; wait
	$(PY) benchmarks/peers/table.py
