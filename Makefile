# `make demo` and `make test` are all a new user needs on a fresh machine: both set up .venv first.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: setup browser orthanc test test-fast demo bench gpu-check mutants readme lint clean

setup: $(STAMP)

# torch==2.14.1 / torchvision==0.29.1 come from this machine's disk through pip's local index.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Debian packages the tests use, installed when missing and run as root: $(1) the check that they are there,
# $(2) the packages, $(3) what is skipped without them
define debian_packages
	@if ! ( $(1) ); then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(2); \
	  else \
	    echo "$(2): missing and not root, so $(3) will be skipped (sudo apt-get install $(2))"; \
	  fi; \
	fi
endef

# Debian's Chromium and its driver, for the end-to-end page test (no browser download at test time).
browser:
	$(call debian_packages,command -v chromium >/dev/null && command -v chromedriver >/dev/null,chromium chromium-driver,the browser test)

# Debian's Orthanc and its DICOMweb plugin: the PACS the DICOM node's tests send to and receive from
orthanc:
	$(call debian_packages,command -v Orthanc >/dev/null && [ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ],orthanc orthanc-dicomweb,the DICOM node's PACS tests)

test: setup browser orthanc
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

demo: setup
	$(BIN)/pneumodet demo --out demo

bench: setup
	$(BIN)/python benchmarks/run.py

# the one GPU check (benchmarks/gpu_check.py): about 8 minutes on a GPU machine, results in $(OUT)
OUT ?= gpu-check
gpu-check:
	PYTHON=$(if $(wildcard $(BIN)/python),$(BIN)/python,python3) benchmarks/gpu_check.sh $(OUT)

# break the code on purpose, one change at a time: each change must turn a test red
mutants: setup
	$(BIN)/python benchmarks/mutants.py

# README's quick-start sample from the last make demo (demo/demo_output.txt)
readme:
	$(PYTHON) benchmarks/readme_sample.py

lint: setup
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf demo .pytest_cache
