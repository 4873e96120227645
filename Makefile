# Two commands do everything on a fresh machine:
#   make run    set up .venv and start the bot (reads .env)
#   make test   set up .venv (with test tools) and run the whole test suite on the CPU
VENV ?= .venv
EXTRAS ?=
PY := $(VENV)/bin/python

.PHONY: translations help run test lint test-transformers-lowest bench-tiny bench-serving bench-load bench-gpu clean

help:  ## this list
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 28

$(VENV)/.installed-run$(EXTRAS): pyproject.toml constraints.txt scripts/setup-venv.sh
	bash scripts/setup-venv.sh $(VENV) $(EXTRAS)
	touch $@

$(VENV)/.installed-dev$(EXTRAS): pyproject.toml constraints.txt scripts/setup-venv.sh
	bash scripts/setup-venv.sh $(VENV) dev$(if $(EXTRAS),$(comma)$(EXTRAS))
	touch $@ $(VENV)/.installed-run$(EXTRAS)

comma := ,

# The bot prints its own line when it stops on a setting to fix (exit 2) or cannot start (exit 3); make then
# stops quietly instead of adding "Error 2" under it. Scripts and services that need the bot's exit status run
# $(PY) -m bot directly (docs/systemd.md).
run: $(VENV)/.installed-run$(EXTRAS)  ## set up .venv and start the bot (reads .env)
	@$(PY) -m bot || case $$? in 2|3) ;; *) exit 1 ;; esac

test: $(VENV)/.installed-dev$(EXTRAS)  ## set up .venv with the test tools and run every test on the CPU
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed-dev$(EXTRAS)  ## ruff (lint and format) and mypy, as CI runs them: zero findings
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# The tests that touch transformers, again with the lowest release pyproject.toml allows (CI runs both)
TRANSFORMERS_LOWEST := $(shell sed -n 's/.*"transformers>=\([0-9.]*\),.*/\1/p' pyproject.toml)
test-transformers-lowest: $(VENV)/.installed-dev$(EXTRAS)  ## the transformers tests on the lowest allowed release
	bash scripts/test-transformers.sh $(TRANSFORMERS_LOWEST) $(VENV)

translations: $(VENV)/.installed-dev  ## refresh bot/locales from the code and list what is left to translate
	$(PY) scripts/translations.py

bench-tiny: $(VENV)/.installed-dev  ## one request's speed on the tiny checkpoint (CPU)
	$(PY) bench/engine.py --tiny

bench-serving: $(VENV)/.installed-dev  ## event-loop lag and throughput on the tiny checkpoint (CPU)
	$(PY) bench/loop_lag.py
	$(PY) bench/throughput.py
	$(PY) bench/burst.py

# Many people with faults injected, through simcord (no model): what each person ends up seeing
bench-load: $(VENV)/.installed-dev  ## 100 people, 500 requests, faults injected: what each one sees
	$(PY) bench/load.py

# Every GPU benchmark (real size), each under a time limit; outputs in bench-results/ (see bench/RESULTS.md)
bench-gpu: $(VENV)/.installed-dev$(EXTRAS)  ## every GPU benchmark, real size (needs a CUDA GPU)
	PYTHON=$(PY) bash bench/gpu_suite.sh bench-results

clean:  ## remove the virtual environments
	rm -rf $(VENV) .venv-transformers-* .pytest_cache
