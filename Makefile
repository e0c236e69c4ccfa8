# The README's commands. `make demo`, `make test` and `make test-fast` create .venv from the lock (requirements.txt) first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell sha1sum requirements.txt | cut -c1-12)

# The floor: a second environment at the other end of pyproject.toml's ranges from the lock, laid out as a PyTorch
# GPU image is (requirements-floor.txt: torch 2.11, triton 3.6, transformers 5.17, and none of deepspeed,
# webdataset, streaming, open_clip, ftfy, pydantic, hjson). The project's other dependencies reach it the way they
# reach such an image: as a wheelhouse installed offline with pip --target, put on PYTHONPATH.
FLOOR := .venv-floor
FLOOR_PY := $(FLOOR)/bin/python
FLOOR_STAMP := $(FLOOR)/.installed-$(shell sha1sum requirements-floor.txt | cut -c1-12)
FLOOR_WHEELS := .wheelhouse-floor
FLOOR_SITE := .floor-site
# Its own extension cache: DeepSpeed's CPU extension built against one torch does not load into another, and
# torch names the cache by Python and CUDA version only.
FLOOR_ENV := PYTHONPATH=$(FLOOR_SITE) TORCH_EXTENSIONS_DIR=$(abspath $(FLOOR))/torch_extensions
# `make wheelhouse`: for a GPU image's Python by default; WITH="transformers wandb faiss" adds those.
PYTHON_VERSION ?= 3.12
WHEELHOUSE ?= wheelhouse

.PHONY: venv venv-floor wheelhouse test test-fast test-floor demo lint format lock clean

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	rm -f $(VENV)/.installed-* && touch $(STAMP)

venv: $(STAMP)

$(FLOOR_STAMP): requirements-floor.txt
	test -x $(FLOOR_PY) || $(PYTHON) -m venv $(FLOOR)
	$(FLOOR_PY) -m pip install -q -r requirements-floor.txt
	rm -f $(FLOOR)/.installed-* && touch $(FLOOR_STAMP)

venv-floor: $(FLOOR_STAMP)

wheelhouse: venv
	$(PY) -m launcher.wheelhouse --out $(WHEELHOUSE) --python-version $(PYTHON_VERSION) --overwrite \
		$(if $(WITH),--with $(WITH))

test: venv
	bash .ci/install-chromium.sh  # headless Chromium renders the eval HTML page in a test (apt, as root)
	bash .ci/install-slurm.sh  # slurmctld, slurmd, munge: tests/test_slurm.py runs sbatch on its own cluster (apt)
	$(PY) -m pytest -q --durations=15
	$(MAKE) test-floor

# The floor environment: the wheelhouse for its Python, installed offline into a fresh --target; then the fast tier,
# the offline install's own test, a 2-rank training run with a resume, and the eval CLI on 2 ranks.
test-floor: venv venv-floor
	$(PY) -m launcher.wheelhouse --out $(FLOOR_WHEELS) --python-version \
		$$($(FLOOR_PY) -c 'import sys; print("%d.%d" % sys.version_info[:2])') --overwrite
	rm -rf $(FLOOR_SITE) && $(FLOOR_PY) -m pip install -q --no-index --no-deps --target $(FLOOR_SITE) $(FLOOR_WHEELS)/*.whl
	$(FLOOR_ENV) $(FLOOR_PY) -m benchmarks.gpu_check_report check-versions
	$(FLOOR_ENV) $(FLOOR_PY) -m pytest -q -p no:cacheprovider -m "not slow and not multirank"
	$(FLOOR_ENV) TBPS_WHEELHOUSE=$(FLOOR_WHEELS) $(FLOOR_PY) -m pytest -q -p no:cacheprovider \
		tests/test_offline_install.py \
		tests/test_train_e2e.py::test_two_ranks_train_with_falling_loss_then_eval \
		tests/test_train_e2e.py::test_stopped_and_resumed_run_reaches_the_same_parameters \
		tests/test_train_e2e.py::test_eval_cli_on_two_ranks_gives_the_single_process_numbers

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
	$(VENV)/bin/uv pip compile pyproject.toml --all-extras -o requirements.txt --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 -q

clean:
	rm -rf runs demo_data .pytest_cache
