# ipvlan-bgp-agent: `make demo` and `make test` each set up a fresh Debian 12 machine (as root) first.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# Debian's python3 starts ~4x faster than a pyenv build inside the VM test tier (shared over 9p).
BASE_PYTHON ?= $(shell test -x /usr/bin/python3 && echo /usr/bin/python3 || command -v python3)
APT_PACKAGES := gobgpd golang-github-osrg-gobgp-dev frr iproute2 iputils-ping python3-venv \
	qemu-system-x86 kmod busybox-static
PYTEST_ARGS ?=

PREFIX ?= /opt/ipvlan-bgp-agent

.PHONY: setup deps venv stubs test test-fast lint demo bench install clean

setup: deps venv stubs

deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:" $$missing; \
	  if [ "$$(id -u)" != 0 ]; then echo "run as root, or: sudo apt-get install $$missing" >&2; exit 1; fi; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

$(VENV)/.installed: pyproject.toml lab/pyproject.toml
	test -x $(PY) || $(BASE_PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps -e ./lab
	touch $@

venv: $(VENV)/.installed

stubs: venv
	$(PY) proto/generate.py

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -m 'not vm' $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check agent lab tests bench proto
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy --strict bench/*.py

demo: setup
	$(VENV)/bin/ipvlan-bgp-lab demo

# Benchmarks (not part of `make test`): the bare GoBGP API baseline, then the agent on real ipvlan (in the
# VM where this kernel has none). Figures are printed; JSON and a PNG land in bench/results/.
BENCH_ARGS ?=
bench: setup
	$(PY) -m pip install -q 'matplotlib>=3.8,<4' 'py-spy>=0.3'
	$(PY) bench/gobgp_baseline.py
	$(PY) bench/agent_bench.py $(BENCH_ARGS)

# Install beside gobgpd on a host: a virtualenv in $(PREFIX), /usr/local/bin/ipvlan-bgp, the systemd units
# and an example config (kept if one exists). Then: edit /etc/ipvlan-bgp/agent.toml and /etc/gobgpd/gobgpd.toml,
# `systemctl enable --now gobgpd ipvlan-bgp-agent`.
install: stubs
	$(BASE_PYTHON) -m venv $(PREFIX)
	$(PREFIX)/bin/pip install -q --upgrade pip
	$(PREFIX)/bin/pip install -q .
	ln -sf $(PREFIX)/bin/ipvlan-bgp /usr/local/bin/ipvlan-bgp
	install -D -m 0644 config/ipvlan-bgp-agent.service /etc/systemd/system/ipvlan-bgp-agent.service
	test -e /etc/systemd/system/gobgpd.service || install -D -m 0644 config/gobgpd.service /etc/systemd/system/gobgpd.service
	test -e /etc/ipvlan-bgp/agent.toml || install -D -m 0600 config/agent.toml /etc/ipvlan-bgp/agent.toml
	test -e /etc/gobgpd/gobgpd.toml || install -D -m 0644 config/gobgpd.toml /etc/gobgpd/gobgpd.toml
	-systemctl daemon-reload 2>/dev/null
	@echo "installed; edit /etc/ipvlan-bgp/agent.toml, then: systemctl enable --now gobgpd ipvlan-bgp-agent"

clean:
	rm -rf $(VENV) agent/gobgpapi build *.egg-info .pytest_cache .mypy_cache .ruff_cache
