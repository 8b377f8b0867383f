# `make run` starts the whole service; `make test` installs everything and runs the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?=
STAMP := $(VENV)/.installed

.PHONY: run test install clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: on a CUDA machine the same pin takes the CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	# spandrel without torchvision (no CPU build exists for this torch): see services/upscaler/compat.py
	$(BIN)/pip install -q --no-deps spandrel
	touch $@

install: $(STAMP)

run: $(STAMP)
	$(BIN)/diffbus up $(if $(CONFIG),--config $(CONFIG))

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) data
