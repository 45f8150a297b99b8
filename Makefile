# make demo   build the environment, run the demo runbook, print reports/index.html
# make lab    JupyterLab on the notebooks, with the project's "opsbook" kernel
# make test   run the whole test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: demo lab test lint format dev bench services-stop clean help

help:
	@echo "make demo    build the environment, run the demo runbook, print reports/index.html"
	@echo "make lab     JupyterLab on the notebooks, with the project's opsbook kernel"
	@echo "make test    run the whole test suite (unit, integration, notebook)"
	@echo "make lint    ruff and notebook checks"
	@echo "make dev     install the environment (with the nbstripout git filter) and show the filter"
	@echo "make bench   run the benchmarks in bench/"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	# the kernel the notebooks name: this environment's Python, whichever Jupyter opens them
	$(BIN)/python -m ipykernel install --sys-prefix --name opsbook --display-name "opsbook" >/dev/null
	# notebooks are committed without outputs: the git filter strips what JupyterLab saves
	if git rev-parse --git-dir >/dev/null 2>&1; then $(BIN)/nbstripout --install --attributes .gitattributes; fi
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m opsbook.demo

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks $(if $(filter 0,$(shell id -u)),--allow-root)

# the suite runs in two worker processes (pytest-xdist); each has its own database and state
TEST_WORKERS ?= 2

test: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS); status=$$?; \
	$(BIN)/python run_notebook.py services stop >/dev/null; exit $$status

lint: $(STAMP)
	$(BIN)/ruff check lib tests bench run_notebook.py
	$(BIN)/ruff format --check lib tests bench run_notebook.py
	$(BIN)/nbstripout --verify notebooks/*.ipynb

format: $(STAMP)
	$(BIN)/ruff check --fix lib tests bench run_notebook.py
	$(BIN)/ruff format lib tests bench run_notebook.py

dev: $(STAMP)
	$(BIN)/nbstripout --install --attributes .gitattributes
	$(BIN)/nbstripout --status

bench: $(STAMP)
	$(BIN)/python bench/load.py
	$(BIN)/python bench/backfill_indices.py
	$(BIN)/python bench/validate.py
	$(BIN)/python bench/reconcile.py
	$(BIN)/python bench/runner.py

services-stop:
	$(BIN)/python run_notebook.py services stop

clean: services-stop
	rm -rf $(VENV) .opsbook
