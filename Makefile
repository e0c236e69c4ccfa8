# The README's commands. `make demo`, `make test` and `make test-fast` create .venv from the lock (requirements.txt) first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell sha1sum requirements.txt | cut -c1-12)

.PHONY: venv test test-fast demo lint format lock clean

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	rm -f $(VENV)/.installed-* && touch $(STAMP)

venv: $(STAMP)

test: venv
	bash .ci/install-chromium.sh  # headless Chromium renders the eval HTML page in a test (apt, as root)
	bash .ci/install-slurm.sh  # slurmctld, slurmd, munge: tests/test_slurm.py runs sbatch on its own cluster (apt)
	$(PY) -m pytest -q --durations=15

# The inner loop: everything except the slow tier (launcher subprocesses, Chromium, Slurm, DataLoader workers)
# and the multi-process tier; under 2 minutes on 2 cores.
test-fast: venv
	$(PY) -m pytest -q -m "not slow and not multirank" --durations=15

demo: venv
	bash launcher/demo.sh

lint: venv
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: venv
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

# Regenerates the lock (requirements.txt) from the direct dependencies declared in pyproject.toml; existing pins are
# kept where they still satisfy the ranges (`uv pip compile --upgrade ...` moves them).
lock: venv
	$(VENV)/bin/uv pip compile pyproject.toml --extra dev -o requirements.txt --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 -q

clean:
	rm -rf runs demo_data .pytest_cache
