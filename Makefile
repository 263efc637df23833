# helpdesk — the two quick-start commands are `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
CONFIG ?= config/helpdesk.yaml

.PHONY: install system-deps run test test-core lint bench bench-quick clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

# Dovecot is the real IMAP server the tests start on a loopback port. As root
# (CI, containers) it is installed with apt-get; otherwise we only say it is
# missing: the IMAP tests then skip locally, and fail under CI=true.
system-deps:
	@if ! command -v dovecot >/dev/null 2>&1 && [ ! -x /usr/sbin/dovecot ]; then \
	  if [ "$$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing dovecot-imapd ..."; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends dovecot-imapd >/dev/null; \
	    (service dovecot stop || true) >/dev/null 2>&1; \
	  else \
	    echo "note: dovecot-imapd is not installed (needs root); IMAP tests will skip" >&2; \
	  fi; \
	fi

run: install
	$(VENV)/bin/helpdesk -c $(CONFIG) db upgrade
	$(VENV)/bin/helpdesk -c $(CONFIG) run

test: install system-deps
	$(PY) -m pytest

test-core: install
	$(PY) -m pytest tests/core -q

bench: install system-deps
	$(PY) -m bench

bench-quick: install system-deps
	$(PY) -m bench --quick

clean:
	rm -rf $(VENV) var .pytest_cache
