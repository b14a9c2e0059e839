# Two entry points for a fresh machine: `make demo` and `make test`. Both create/refresh .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
STAMP := $(VENV)/.installed

.PHONY: venv demo test bench browser clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# torch is installed on its own first: `torch==2.13.0` takes the CPU wheel where there is no GPU,
# and the package's torch range is then already satisfied (no multi-GB CUDA download).
$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(PIP) install "torch==2.13.0" || $(PIP) install "torch>=2.4,<2.14"
	$(PIP) install -e ".[test,demo]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m adapter_cli.demo

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

# Speed/memory ratios, all from one run (GPU when there is one; a small shape on CPU).
bench: $(STAMP)
	$(PY) bench/run.py

# Debian's chromium for the explore-site browser test (tests/cli/test_hub.py); best effort: without it
# that one test skips.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  timeout 600 sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium' \
	  >/dev/null 2>&1; } || echo "note: no chromium; the browser test will be skipped"

clean:
	rm -rf $(VENV) build *.egg-info
