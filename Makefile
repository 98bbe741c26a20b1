# ipvlan-bgp-agent: `make demo` and `make test` each set up a fresh Debian 12 machine (as root) first.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# Debian's python3 starts ~4x faster than a pyenv build inside the VM test tier (shared over 9p).
BASE_PYTHON ?= $(shell test -x /usr/bin/python3 && echo /usr/bin/python3 || command -v python3)
APT_PACKAGES := gobgpd golang-github-osrg-gobgp-dev frr iproute2 iputils-ping python3-venv \
	qemu-system-x86 kmod busybox-static docker.io \
	debhelper dpkg-dev fakeroot help2man lintian systemd prometheus
PYTEST_ARGS ?=
# docker.io is for the VM tests only (dockerd runs in the guest): its units are masked on the host before
# apt-get can start them, and stopped after (sysvinit: stopped and disabled).
DOCKER_UNITS := docker.service docker.socket containerd.service

PREFIX ?= /opt/ipvlan-bgp-agent

.PHONY: setup deps venv stubs completions wheel deb test test-fast lint demo bench faults convergence fleet install clean

setup: deps venv stubs

deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:" $$missing; \
	  if [ "$$(id -u)" != 0 ]; then echo "run as root, or: sudo apt-get install $$missing" >&2; exit 1; fi; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  case " "$$(echo $$missing)" " in *" docker.io "*) \
	    echo "docker.io is for the VM tests (dockerd runs in the guest): masking its services on this host"; \
	    systemctl mask $(DOCKER_UNITS) >/dev/null 2>&1 || true;; \
	  esac; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  case " "$$(echo $$missing)" " in *" docker.io "*) \
	    systemctl stop $(DOCKER_UNITS) >/dev/null 2>&1; \
	    test -d /run/systemd/system || { service docker stop; update-rc.d docker disable; } >/dev/null 2>&1; \
	    true;; \
	  esac; \
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

# Shell completion, generated from the CLI's argparse parser by shtab (a dev dependency; the scripts are
# committed, and tests/unit/test_cli.py fails when they no longer match the parser: then run this).
completions: venv
	$(PY) -m tests.completions contrib/completion

# The wheel generates its own GoBGP stubs while it is built (setup.py); the dev venv has the build tools,
# so no network is needed here. Output in dist/.
DIST ?= dist
wheel: venv
	rm -rf build $(DIST)/ipvlan_bgp_agent-*.whl
	$(PY) -m pip wheel -q --no-build-isolation --no-deps -w $(DIST) .
	@ls -1 $(DIST)/*.whl

# The Debian package (debian/, debhelper): a virtualenv in /opt/ipvlan-bgp-agent with the wheel and its PyPI
# dependencies, the agent unit, a drop-in for Debian's gobgpd.service. Output in dist/, checked by lintian.
deb: venv
	dpkg-checkbuilddeps
	mkdir -p $(DIST)
	debian/rules clean binary WHEEL_PYTHON=$(abspath $(PY)) WHEEL_FLAGS=--no-build-isolation DEB_DESTDIR=$(abspath $(DIST))
	debian/rules clean
	lintian --fail-on error,warning $(DIST)/ipvlan-bgp-agent_*.deb
	@ls -1 $(DIST)/*.deb

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -m 'not vm' $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check agent lab tests bench proto
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy --strict bench/*.py

demo: setup
	$(VENV)/bin/ipvlan-bgp-lab demo $(if $(TOPOLOGY),containerlab/$(TOPOLOGY).clab.yml)

# Benchmarks (not part of `make test`): the bare GoBGP API baseline, then the agent on real ipvlan (in the
# VM where this kernel has none). Figures are printed; JSON and a PNG land in bench/results/.
BENCH_ARGS ?=
bench: setup
	$(PY) -m pip install -q 'matplotlib>=3.8,<4' 'py-spy>=0.3'
	$(PY) bench/gobgp_baseline.py
	$(PY) bench/agent_bench.py $(BENCH_ARGS)

# The fault suite (issue #11): kills, freezes, bursts, namespace churn, a hostile container, fuzzing, each case
# against its pass condition (the VM cases in the VM where this kernel has no ipvlan). Writes
# docs/reliability/faults-*.json and regenerates docs/reliability.md; exits non-zero if a case fails.
# FAULTS_ARGS=--small for a quick run at toy sizes.
FAULTS_ARGS ?=
faults: setup
	$(PY) bench/faults.py $(FAULTS_ARGS)

# Host-failure convergence in the fabric (issue #15): how long the spine and the leaf keep a dead host's routes
# (uplink down, gobgpd killed, host frozen), on this kernel (no ipvlan needed), under the netns tier's lock.
# Writes docs/convergence/convergence-*.json and regenerates docs/convergence.md. CONVERGENCE_ARGS="-n 5" etc.
CONVERGENCE_ARGS ?=
convergence: setup
	flock /tmp/ibgp-netns.lock $(PY) -m bench.fabric_convergence $(CONVERGENCE_ARGS)

# Fleet scale in the fabric (issue #15): N hosts x M containers started at once under a spine and two leaves, host
# routes vs one aggregate per host, a leaf restart (in the VM, 6G of memory unless IBGP_VM_MEMORY says otherwise).
# Writes docs/fleet/fleet-*.json and regenerates docs/fleet.md. FLEET_ARGS="--size 2x50 --size 8x250" picks sizes.
FLEET_ARGS ?=
fleet: setup
	$(PY) bench/fleet.py $(FLEET_ARGS)

# Install from source beside Debian's gobgpd: a virtualenv in $(PREFIX) with the wheel, /usr/local/bin/ipvlan-bgp,
# the agent unit, the drop-in for Debian's gobgpd.service, the docs and example configs (kept if they exist).
# Then: edit /etc/ipvlan-bgp/agent.toml and /etc/gobgpd/gobgpd.toml, `systemctl enable --now gobgpd ipvlan-bgp-agent`.
DOCDIR ?= /usr/share/doc/ipvlan-bgp-agent
install: wheel
	$(BASE_PYTHON) -m venv $(PREFIX)
	$(PREFIX)/bin/pip install -q --upgrade pip
	$(PREFIX)/bin/pip install -q "$$(ls $(DIST)/ipvlan_bgp_agent-*.whl)[docker]"  # [docker]: aiodocker
	$(PREFIX)/bin/pip install -q --force-reinstall --no-deps $(DIST)/ipvlan_bgp_agent-*.whl  # same version, new code
	ln -sf $(PREFIX)/bin/ipvlan-bgp /usr/local/bin/ipvlan-bgp
	sed 's|/opt/ipvlan-bgp-agent|$(PREFIX)|g' config/ipvlan-bgp-agent.service > /etc/systemd/system/ipvlan-bgp-agent.service
	install -D -m 0644 config/gobgpd.service.d/ipvlan-bgp.conf /etc/systemd/system/gobgpd.service.d/ipvlan-bgp.conf
	install -d $(DOCDIR)/examples
	install -m 0644 README.md docs/install.md docs/operations.md docs/troubleshooting.md docs/metrics.md docs/cli.md \
	  docs/ipv6.md docs/docker.md docs/fabric.md docs/convergence.md $(DOCDIR)/
	install -m 0644 config/gobgpd.toml config/examples/gobgpd-dual-tor.toml contrib/prometheus/alerts.yml \
	  contrib/grafana/ipvlan-bgp.json $(DOCDIR)/examples/
	install -D -m 0644 contrib/completion/bash/ipvlan-bgp /usr/share/bash-completion/completions/ipvlan-bgp
	install -D -m 0644 contrib/completion/zsh/_ipvlan-bgp /usr/share/zsh/vendor-completions/_ipvlan-bgp
	test -e /etc/ipvlan-bgp/agent.toml || install -D -m 0600 config/agent.toml /etc/ipvlan-bgp/agent.toml
	test -e /etc/gobgpd/gobgpd.toml || install -D -m 0644 config/gobgpd.toml /etc/gobgpd/gobgpd.toml
	-systemctl daemon-reload 2>/dev/null
	@echo "installed; edit /etc/ipvlan-bgp/agent.toml and /etc/gobgpd/gobgpd.toml, then:" \
	  "systemctl restart gobgpd && systemctl enable --now ipvlan-bgp-agent"

clean:
	rm -rf $(VENV) agent/gobgpapi build $(DIST) *.egg-info .pytest_cache .mypy_cache .ruff_cache
	-test ! -x debian/rules || debian/rules clean
