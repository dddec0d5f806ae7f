# zlpr-serve: the two commands are `make run` (start the server) and `make test` (all tests).
# Both install what they need first (scripts/install-deps.sh, idempotent).
BUILD ?= build
ASAN_BUILD ?= build-asan
TSAN_BUILD ?= build-tsan
FUZZ_BUILD ?= build-fuzz
PYVENV ?= build-pyvenv
OIPVENV ?= build-oipvenv
FUZZ_SECONDS ?= 600
FUZZERS := convert cli_readers http_request oip_convert oip_wire http_session
CMAKE_FLAGS ?=
# ccache when it is installed, looked up by each recipe's shell (after `deps` has installed it),
# not when make reads this file: otherwise the first build of a fresh machine and the next one
# configure different compiler command lines, and the second rebuilds the whole tree.
LAUNCHER = -DCMAKE_CXX_COMPILER_LAUNCHER=$$(command -v ccache) -DCMAKE_CUDA_COMPILER_LAUNCHER=$$(command -v ccache)
JOBS ?= $(shell nproc)

.PHONY: all deps build test test-style test-unit test-asan test-tsan test-fuzz fuzz fuzz-build test-python \
  test-python-torch test-oip test-docs test-container run \
  bench-cpu format clean

all: build

deps:
	scripts/install-deps.sh

build: deps
	cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_EXPORT_COMPILE_COMMANDS=ON \
	  $(LAUNCHER) $(CMAKE_FLAGS)
	cmake --build $(BUILD) -j $(JOBS)

# Every test: the style checks, unit, service, client and deployment tests (ctest), the kernel tests under
# ASan+UBSan, the server and client tests under ThreadSanitizer, each fuzz harness for 30 s,
# the Python package (built as a wheel, installed in a fresh venv, tested against the server),
# Triton's clients against the Open Inference Protocol (gRPC and HTTP), the docs executed, then the CPU and CUDA
# container images built and run for real (podman, as root; the CUDA image without a GPU).
test: test-style test-unit test-asan test-tsan test-fuzz test-python test-oip test-docs test-container

# The C++ is formatted (.clang-format) and clang-tidy finds nothing (.clang-tidy).
test-style: build
	scripts/check-style.sh $(BUILD)

test-unit: build
	ctest --test-dir $(BUILD) --output-on-failure -j $(JOBS)

test-asan: deps
	cmake -S . -B $(ASAN_BUILD) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo $(LAUNCHER) \
	  -DZLPR_CUDA=OFF -DZLPR_BUILD_SERVICE=OFF -DZLPR_BUILD_BENCH=OFF -DZLPR_SANITIZE=address,undefined
	cmake --build $(ASAN_BUILD) -j $(JOBS)
	ctest --test-dir $(ASAN_BUILD) --output-on-failure -j $(JOBS) -L kernels

# The server, client and CLI tests under ThreadSanitizer, against an instrumented build of the
# installed abseil (scripts/build-tsan-abseil.sh: Debian's is not instrumented, so TSan could
# not see absl::Mutex). Any report fails the run (halt_on_error).
TSAN_ENV = LD_LIBRARY_PATH=$(abspath $(TSAN_BUILD))/abseil/lib \
  TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 history_size=7 suppressions=$(CURDIR)/tests/tsan.supp"
test-tsan: deps
	scripts/build-tsan-abseil.sh $(TSAN_BUILD)/abseil
	cmake -S . -B $(TSAN_BUILD) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo $(LAUNCHER) \
	  -DZLPR_CUDA=OFF -DZLPR_BUILD_BENCH=OFF -DZLPR_SANITIZE=thread
	cmake --build $(TSAN_BUILD) -j $(JOBS)
	$(TSAN_ENV) ctest --test-dir $(TSAN_BUILD) --output-on-failure -j $(JOBS) -L "service|client" \
	  -E ClientPackage

# libFuzzer harnesses (fuzz/), built with clang under ASan+UBSan. Each run starts from the
# committed seeds (fuzz/corpus/NAME, read only) and grows its own corpus in $(FUZZ_BUILD);
# a finding is written to $(FUZZ_BUILD)/ and fails the run.
fuzz-build: deps
	CC=clang CXX=clang++ cmake -S . -B $(FUZZ_BUILD) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	  $(LAUNCHER) -DZLPR_CUDA=OFF -DZLPR_BUILD_BENCH=OFF -DZLPR_FUZZ=ON -DZLPR_SANITIZE=address,undefined
	cmake --build $(FUZZ_BUILD) -j $(JOBS) --target $(FUZZERS:%=zlpr_%_fuzzer)

# http_session runs a server in the process, whose threads allocate between inputs: libFuzzer's
# per-input leak check would blame those on the input, so it is off for that harness.
define run_fuzzers
	for f in $(FUZZERS); do \
	  extra=; [ $$f = http_session ] && extra=-detect_leaks=0; \
	  mkdir -p $(FUZZ_BUILD)/corpus/$$f && \
	  $(FUZZ_BUILD)/fuzz/zlpr_$${f}_fuzzer -max_total_time=$(1) -timeout=10 -rss_limit_mb=2048 \
	    -print_final_stats=1 -artifact_prefix=$(FUZZ_BUILD)/ $$extra $(FUZZ_BUILD)/corpus/$$f \
	    fuzz/corpus/$$f || exit 1; \
	done
endef

test-fuzz: fuzz-build
	$(call run_fuzzers,30)

fuzz: fuzz-build
	$(call run_fuzzers,$(FUZZ_SECONDS))

# The wheel of python/ (with its native transport, required here), installed into a fresh venv
# over Debian's python3 (whose python3-torch and numpy it sees), then its tests against
# build/server/zlpr-server on both transports, the DDP run included.
test-python: build
	rm -rf $(PYVENV) && /usr/bin/python3 -m venv --system-site-packages $(PYVENV)
	ZLPR_NATIVE=1 $(PYVENV)/bin/pip wheel --quiet --disable-pip-version-check --no-deps \
	  -w $(PYVENV)/dist ./python
	$(PYVENV)/bin/pip install --quiet --disable-pip-version-check $(PYVENV)/dist/zlpr-*.whl pytest
	cd python/tests && ../../$(PYVENV)/bin/python -m pytest -q -p no:cacheprovider . \
	  --server=$(abspath $(BUILD))/server/zlpr-server --require-native
	$(MAKE) test-python-torch

# The same wheel under a current PyTorch from PyPI, in a venv of its own: torch.compile (which
# Debian's PyTorch 1.13 lacks) and the DDP run. PyPI's Linux wheel brings CUDA's libraries
# (about 5 GB installed); nothing here needs a GPU.
TORCH_VERSION ?= 2.15.0
test-python-torch:
	rm -rf $(PYVENV)-torch && /usr/bin/python3 -m venv $(PYVENV)-torch
	$(PYVENV)-torch/bin/pip install --quiet --disable-pip-version-check "torch==$(TORCH_VERSION)" \
	  pytest $(PYVENV)/dist/zlpr-*.whl
	cd python/tests && ../../$(PYVENV)-torch/bin/python -m pytest -q -p no:cacheprovider \
	  test_torch.py test_train_ddp.py --server=$(abspath $(BUILD))/server/zlpr-server \
	  --require-native --require-torch-compile

# tritonclient (from PyPI, in its own venv: it pins its own protobuf) against the server, and
# perf_analyzer from the last tritonclient wheel that ships it (2.51.0, another venv), which
# needs Debian's libb64-0d and the CUDA runtime library from PyPI (no GPU is used).
PERF_ANALYZER_ENV = ZLPR_PERF_ANALYZER=$(abspath $(OIPVENV))-pa/bin/perf_analyzer \
  LD_LIBRARY_PATH=$$(echo $(abspath $(OIPVENV))-pa/lib/python3*/site-packages/nvidia/cuda_runtime/lib)
test-oip: build
	rm -rf $(OIPVENV) $(OIPVENV)-pa && /usr/bin/python3 -m venv $(OIPVENV)
	$(OIPVENV)/bin/pip install --quiet --disable-pip-version-check -r tests/oip/requirements.txt
	/usr/bin/python3 -m venv $(OIPVENV)-pa
	$(OIPVENV)-pa/bin/pip install --quiet --disable-pip-version-check \
	  "tritonclient[grpc]==2.51.0" nvidia-cuda-runtime-cu12
	cd tests/oip && $(PERF_ANALYZER_ENV) ../../$(OIPVENV)/bin/python -m pytest -q \
	  -p no:cacheprovider . --server=$(abspath $(BUILD))/server/zlpr-server

# The documentation, executed (tests/docs/run_docs.py): every shell and Python block of the
# README, python/README.md, docs/ and the examples' docstrings, in order, against the server
# the README starts on the default ports (which must be free); blocks that cannot run here say
# why in the doc. First the runner's own tests (a snippet broken on purpose must fail it).
# tritonclient's blocks use test-oip's venv.
test-docs: build
	python3 -m pytest -q -p no:cacheprovider tests/docs --build=$(abspath $(BUILD))
	python3 tests/docs/run_docs.py --build $(BUILD) \
	  --python tritonclient=$(abspath $(OIPVENV))/bin/python

test-container: build
	tests/deploy/container_test.sh $(BUILD)

# The server on the embedded default backend (CUDA when a device is visible, else the CPU).
run: build
	$(BUILD)/server/zlpr-server --grpc_address=0.0.0.0:50051 --metrics_address=0.0.0.0:9464

# CPU kernels beside the PyTorch baseline, one core each (bench/RESULTS.md).
bench-cpu: build
	scripts/install-deps.sh --bench
	/usr/bin/python3 bench/cpu_vs_torch.py --bench $(BUILD)/bench/zlpr_kernels_bench

format:
	clang-format -i $$(git ls-files '*.h' '*.cc' '*.cu' '*.cuh')

clean:
	rm -rf $(BUILD) $(ASAN_BUILD) $(TSAN_BUILD) $(FUZZ_BUILD) $(PYVENV) $(PYVENV)-torch $(OIPVENV) \
	  $(OIPVENV)-pa
