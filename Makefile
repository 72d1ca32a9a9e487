# natsalon: two commands set everything up on a fresh machine.
#   make run    create the venv, install natsalon, run the salon on this machine
#   make test   install what the tests need (venv + Debian tools) and run them all
#   make bench  run the benchmarks (writes bench/results/*.md)
#   make demo   two NATed lab sites meet through the salon (needs root)

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# what the salon needs (make run), and what the tests and benchmarks need too
RUN_STAMP := $(VENV)/.installed-run
STAMP := $(VENV)/.installed
# Debian packages the tests and benchmarks use: command -> package
SYSTEM_TOOLS := ip:iproute2 nft:nftables turnserver:coturn turnutils_stunclient:coturn sysctl:procps cc:gcc taskset:util-linux turnutils_uclient:coturn turnutils_peer:coturn promtool:prometheus systemd-analyze:systemd redis-server:redis-server
ARGS ?=
PYTEST_ARGS ?=

.PHONY: run test bench demo venv sysdeps clean

$(RUN_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e . --config-settings editable_mode=compat
	touch $(RUN_STAMP)

$(STAMP): $(RUN_STAMP)
	$(PY) -m pip install -q -e '.[test]' --config-settings editable_mode=compat
	touch $(STAMP)

venv: $(STAMP)

# Install missing Debian tools when we are root (CI is); elsewhere say what is
# missing: the NAT-lab tests then skip with that reason (outside CI).
sysdeps:
	@missing=""; for pair in $(SYSTEM_TOOLS); do \
	  cmd=$${pair%%:*}; pkg=$${pair##*:}; \
	  command -v $$cmd >/dev/null 2>&1 || PATH=$$PATH:/usr/sbin:/sbin command -v $$cmd >/dev/null 2>&1 || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "missing system tools (need root to install):$$missing"; fi; \
	fi

run: $(RUN_STAMP)
	$(VENV)/bin/twistd -n --pidfile= natsalon $(ARGS)

test: $(STAMP) sysdeps
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP) sysdeps
	@command -v pypy3 >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && apt-get install -y -qq pypy3 >/dev/null; } || true
	mkdir -p bench/build bench/results
	cc -O2 -Wall -o bench/build/stunload bench/stunload.c
	cc -O2 -Wall -o bench/build/joinload bench/joinload.c
	$(PY) bench/reflector_bench.py
	$(PY) bench/probe_bench.py
	$(PY) bench/connect_bench.py
	$(PY) bench/introducer_bench.py
	$(PY) bench/hard_nat_bench.py
	$(PY) bench/turn_bench.py

demo: $(STAMP) sysdeps
	$(PY) demo/demo.py

clean:
	rm -rf $(VENV) .venv-pypy build dist *.egg-info bench/build
