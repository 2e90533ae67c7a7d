# Two commands that work on a fresh machine:
#   make demo   install into .venv, then calibrate -> export -> evaluate the bundled sample model
#   make test   install with the test extras into .venv, then run the whole suite
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO := build/demo
SAMPLES := sample_models

.PHONY: install demo test bench bench-smoke samples clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/python -m pip install -q '.[test]'

demo: install
	mkdir -p $(DEMO)
	$(BIN)/ptq calibrate $(SAMPLES)/digits_cnn.onnx --data $(SAMPLES)/digits/calib -o $(DEMO)/digits_cnn.table.json
	$(BIN)/ptq export $(SAMPLES)/digits_cnn.onnx --table $(DEMO)/digits_cnn.table.json -o $(DEMO)/digits_cnn.int8.onnx
	$(BIN)/ptq evaluate $(SAMPLES)/digits_cnn.onnx $(DEMO)/digits_cnn.int8.onnx \
		--data $(SAMPLES)/digits/eval --labels $(SAMPLES)/digits/eval/labels.csv

test: install
	$(BIN)/pytest tests

# Rebuild the sample models and data (needs torch; never a dependency of ptq itself).
samples:
	$(PY) -m venv .venv-samples
	.venv-samples/bin/python -m pip install -q -r $(SAMPLES)/requirements.txt
	.venv-samples/bin/python $(SAMPLES)/build_samples.py

clean:
	rm -rf build dist *.egg-info $(DEMO)
