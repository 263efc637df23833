# helpdesk — the two quick-start commands are `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
CONFIG ?= config/helpdesk.yaml

.PHONY: install system-deps run test test-core wheel bench bench-quick clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

# Dovecot (IMAP) and PostgreSQL are real servers the tests start on loopback
# ports; the portal's browser tests drive Debian's Chromium through its
# chromedriver (never a browser download). As root (CI, containers) they are
# installed with apt-get; otherwise we only say what is missing: those tests then
# skip locally, and fail under CI=true.
system-deps:
	@missing=""; \
	command -v dovecot >/dev/null 2>&1 || [ -x /usr/sbin/dovecot ] || missing="$$missing dovecot-imapd"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	[ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
	[ -x /usr/bin/chromedriver ] || missing="$$missing chromium-driver"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing$$missing ..."; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	    (service dovecot stop; service postgresql stop) >/dev/null 2>&1 || true; \
	  else \
	    echo "note:$$missing not installed (needs root); those tests will skip" >&2; \
	  fi; \
	fi

run: install
	$(VENV)/bin/helpdesk -c $(CONFIG) db upgrade
	$(VENV)/bin/helpdesk -c $(CONFIG) run

test: install system-deps
	$(PY) -m pytest

test-core: install
	$(PY) -m pytest tests/core tests/test_architecture.py -q

# dist/helpdesk-*.whl: everything a site needs (README, Quick start: from a wheel)
wheel: install
	$(PY) -m pip wheel --quiet --no-deps -w dist .

# The benchmarks (bench/README.md) also need the `bench` extra (pyinstrument).
$(VENV)/.bench-installed: $(VENV)/.installed pyproject.toml
	$(PY) -m pip install --quiet -e '.[test,bench]'
	touch $@

bench: install $(VENV)/.bench-installed system-deps
	$(PY) -m bench

bench-quick: install $(VENV)/.bench-installed system-deps
	$(PY) -m bench --quick

clean:
	rm -rf $(VENV) var .pytest_cache build dist bench/.peer-venv
