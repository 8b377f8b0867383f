# `make run` starts the whole service; `make test` installs everything and runs the tests;
# `make bench` runs the CPU benchmarks (bench/README.md).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?=
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.bench-installed
WEB_ASSETS := services/api/static/vendor/VERSIONS

.PHONY: run test install bench bench-gpu-wheels clean browser

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

# Swagger UI and ReDoc from the npm registry (no CDN at run time): see tools/web-assets.sh
$(WEB_ASSETS): tools/web-assets.sh
	tools/web-assets.sh services/api/static/vendor

# Debian's Chromium for the web-page tests; without it (not root, no apt) those tests are skipped.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	      || echo "warning: could not install chromium: the web-page tests will be skipped"; \
	  else echo "note: no chromium (needs root and apt-get): the web-page tests will be skipped"; fi; }

install: $(STAMP) $(WEB_ASSETS) browser

run: $(STAMP) $(WEB_ASSETS)
	$(BIN)/diffbus up $(if $(CONFIG),--config $(CONFIG))

test: install
	$(BIN)/python -m pytest -q

$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install -q -c constraints.txt -e '.[test,bench]'
	touch $@

# The Celery baseline needs Debian's redis-server; the benchmark starts its own on a free port.
bench: $(BENCH_STAMP) $(WEB_ASSETS)
	@command -v redis-server >/dev/null || { test "$$(id -u)" = 0 && apt-get update -qq && \
		apt-get install -y -qq redis-server >/dev/null; } || \
		{ echo "redis-server is missing: apt-get install redis-server (as root)"; exit 1; }
	$(BIN)/python bench/overhead.py
	$(BIN)/python bench/control_plane.py
	$(BIN)/python bench/batching.py

# Wheels for bench/device.sh on a GPU host without network (bench/README.md): cp312 for the host, cp311 for
# the rehearsal here (bench/device.sh --tiny). Into the git-ignored .whl/, about 25 MB.
GPU_PYTHONS ?= 3.12 3.11
bench-gpu-wheels:
	PIP="$(PYTHON) -m pip" bench/wheels.sh $(GPU_PYTHONS)

clean:
	rm -rf $(VENV) data services/api/static/vendor
