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
	# docker-compose validates compose/ in the tests (no Docker engine needed); best effort, as root only
	command -v docker-compose >/dev/null || [ "$$(id -u)" != 0 ] || \
		(apt-get install -y -qq docker-compose >/dev/null 2>&1 || \
		 (apt-get update -qq && apt-get install -y -qq docker-compose) >/dev/null 2>&1) || \
		echo "docker-compose not installed: tests/test_compose.py will skip its compose checks"
	touch $@

install: $(STAMP)

run: $(STAMP)
	$(BIN)/diffbus up $(if $(CONFIG),--config $(CONFIG))

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) data
