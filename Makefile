# Two commands on a fresh machine: `make demo` (the main job) and `make test` (the test suite).
# Both install what they need first; a second run finds everything installed and goes straight on.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
PYTEST_ARGS ?=

.PHONY: install demo test

install:
	@# Keep a torch that is already there (e.g. a CUDA build); else the CPU build this project pins.
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install "torch==2.13.0"
	$(PIP) install -q -e ".[test]"
	$(PIP) install -q -r requirements-easyedit.txt
	@# Last, and without their dependencies: packages whose own pins are ancient (easyeditor wants
	@# torch==2.0.1) or need compiling. Installed after everything else, so pip's resolver never
	@# reports those pins as conflicts (it checks them only when a package they name is installed).
	$(PIP) install -q --no-deps -r requirements-nodeps.txt
	@echo "make install: done (easyeditor is installed without its torch 2.0 / transformers 4.30 pins; see README)"

demo: install
	split-steer demo

test: install
	@# The EasyEdit tests skip where the host is missing; here it was just installed, so they must run.
	SPLIT_PLUGIN_REQUIRE_EASYEDIT=1 $(PYTHON) -m pytest $(PYTEST_ARGS)
