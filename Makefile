# Two commands that work on a fresh machine:
#   make demo   install into .venv, then calibrate -> export -> evaluate -> simulate the bundled sample model
#   make test   install with the test and dask extras into .venv, then run the whole suite
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO := build/demo
SAMPLES := sample_models

.PHONY: install qemu demo demo-all test bench bench-data bench-fonts bench-smoke bench-latency bench-saturation bench-rounding bench-scale samples clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/python -m pip install -q '.[test,dask]'

demo: install
	mkdir -p $(DEMO)
	$(BIN)/ptq calibrate $(SAMPLES)/digits_cnn.onnx --data $(SAMPLES)/digits/calib -o $(DEMO)/digits_cnn.table.json
	$(BIN)/ptq export $(SAMPLES)/digits_cnn.onnx --table $(DEMO)/digits_cnn.table.json -o $(DEMO)/digits_cnn.int8.onnx
	$(BIN)/ptq evaluate $(SAMPLES)/digits_cnn.onnx $(DEMO)/digits_cnn.int8.onnx \
		--data $(SAMPLES)/digits/eval --labels $(SAMPLES)/digits/eval/labels.csv
	$(BIN)/ptq simulate $(SAMPLES)/digits_cnn.onnx --table $(DEMO)/digits_cnn.table.json --requant fp32 -q \
		--data $(SAMPLES)/digits/eval --labels $(SAMPLES)/digits/eval/labels.csv

# Every range method on both sample models, from one observation pass per model (auto also reads
# the samples again, to score its candidates).
METHODS := max percentile kl mse auto
demo-all: install
	mkdir -p $(DEMO)
	for model in digits_cnn digits_transformer; do \
	  $(BIN)/ptq calibrate $(SAMPLES)/$$model.onnx --data $(SAMPLES)/digits/calib -o $(DEMO)/$$model.table.json -q && \
	  for method in $(METHODS); do \
	    $(BIN)/ptq calibrate $(SAMPLES)/$$model.onnx --observations $(DEMO)/$$model.table.obs.npz \
	      $$(test $$method = auto && echo --data $(SAMPLES)/digits/calib) --method $$method \
	      -o $(DEMO)/$$model.$$method.json -q && \
	    $(BIN)/ptq export $(SAMPLES)/$$model.onnx --table $(DEMO)/$$model.$$method.json -o $(DEMO)/$$model.$$method.onnx -q && \
	    echo "$$model $$method: $$($(BIN)/ptq evaluate $(SAMPLES)/$$model.onnx $(DEMO)/$$model.$$method.onnx \
	      --data $(SAMPLES)/digits/eval --labels $(SAMPLES)/digits/eval/labels.csv -q | tail -n 3 | tr -s ' \n' ' ')"; \
	  done; \
	done

# qemu-user shows ONNX Runtime an x86 CPU without VNNI (-cpu Haswell), so tests/test_qemu_avx2.py
# checks its saturating AVX2 kernels on any x86 machine.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
qemu:
	@command -v qemu-x86_64 >/dev/null 2>&1 || [ "$$(uname -m)" != x86_64 ] || \
	  ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq qemu-user >/dev/null)

test: install qemu
	$(BIN)/pytest tests

# Real-model benchmark (bench/README in README.md): models from PyPI wheels, data rendered from
# fixed seeds with Debian's fonts, ptq and ONNX Runtime's quantize_static side by side.
BENCH_FONTS := fonts-dejavu-core fonts-liberation fonts-freefont-ttf fonts-wqy-microhei
bench-fonts:
	@dpkg -s $(BENCH_FONTS) >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq $(BENCH_FONTS))

bench-data: install bench-fonts
	$(BIN)/python -m bench.fetch
	$(BIN)/python -m bench.data

bench: bench-data
	$(BIN)/python -m bench.run

# ONNX Runtime latency of float, ORT quantize_static and ptq's default export (bench/latency.py).
bench-latency: bench-data
	$(BIN)/python -m bench.latency

# The remedies for x86 AVX2 int16 pair saturation, side by side (writes bench/results-saturation.*).
bench-saturation: bench-data qemu
	$(BIN)/python -m bench.saturation --qemu cls,magika

# Weight rounding on every model: nearest / AdaRound / + bias correction at W8A8 and W4A8, per-tensor
# weights with and without equalization, data-free (writes bench/results-rounding.*; hours).
bench-rounding: bench-data
	$(BIN)/python -m bench.rounding

# 5,000 calibration samples: memory, --workers 2 throughput, resume cost (writes bench/results-scale.json).
bench-scale: install bench-fonts
	$(BIN)/python -m bench.fetch
	$(BIN)/python -m bench.scale

bench-smoke: install bench-fonts
	$(BIN)/python -m bench.fetch
	$(BIN)/python -m bench.data --only cls,magika
	$(BIN)/python -m bench.run --smoke

# Rebuild the sample models and data (needs torch; never a dependency of ptq itself).
samples:
	$(PY) -m venv .venv-samples
	.venv-samples/bin/python -m pip install -q -r $(SAMPLES)/requirements.txt
	.venv-samples/bin/python $(SAMPLES)/build_samples.py

clean:
	rm -rf build dist *.egg-info $(DEMO)
