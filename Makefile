# The README's commands. Both `make demo` and `make test` create .venv from the pinned requirements first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell sha1sum requirements.txt | cut -c1-12)

.PHONY: venv test demo lint format clean

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	rm -f $(VENV)/.installed-* && touch $(STAMP)

venv: $(STAMP)

test: venv
	bash .ci/install-chromium.sh  # headless Chromium renders the eval HTML page in a test (apt, as root)
	bash .ci/install-slurm.sh  # slurmctld, slurmd, munge: tests/test_slurm.py runs sbatch on its own cluster (apt)
	$(PY) -m pytest -q

demo: venv
	bash launcher/demo.sh

lint: venv
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: venv
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

clean:
	rm -rf runs demo_data .pytest_cache
