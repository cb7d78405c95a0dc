# The two commands a newcomer runs: `make demo` and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEBIAN_PACKAGES := crun runc busybox-static iptables skopeo docker-registry iproute2 umoci curl chromium tini
# the peers the benchmarks measure against (../shared/PEERS.md)
BENCH_PACKAGES := podman buildah uidmap fuse-overlayfs
PYTEST_ARGS ?=

.PHONY: demo test deps apt venv bench clean

demo: deps venv
	bash examples/demo.sh

# Two workers, each test file whole on one of them (module-scoped fixtures stay per file);
# every stack a test starts has its own ports, bridge, subnet and cgroup parent.
# `make test PYTEST_ARGS="-p randomly"` shuffles the order (the seed is printed).
TEST_WORKERS ?= 2

test: deps venv
	@# pytest exits 5 when it collected no test: that is a failure here, said out loud.
	@$(VENV)/bin/pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; fi; exit $$rc

# Debian packages the services and tests use (installed only when missing; needs root).
deps:
	@$(MAKE) -s apt PACKAGES="$(DEBIAN_PACKAGES)"

apt:
	@missing=""; for p in $(PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		if [ "$$(id -u)" != 0 ]; then echo "run as root (or install:$$missing)" >&2; exit 1; fi; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@# compat mode: a plain .pth entry, not an import hook that costs every command ~15 ms
	$(PY) -m pip install -q -e '.[test]' --config-settings editable_mode=compat
	@# bytecode now: where PYTHONDONTWRITEBYTECODE is set, every command would compile its modules anew (~65 ms)
	$(PY) -m compileall -q -j 0 services shared
	touch $(STAMP)

bench: deps venv
	@$(MAKE) -s apt PACKAGES="$(BENCH_PACKAGES)"
	$(PY) bench/registry.py
	$(PY) bench/run.py
	$(PY) bench/build.py
	$(PY) bench/gc.py

clean:
	rm -rf $(VENV) .demo *.egg-info
