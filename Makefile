# The two commands the README opens with: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
SUITE  ?= quick
CORES  ?= 2

.PHONY: setup demo test test-all perf device-check test-cluster lint smoke snakemake-report docs docs-figure cost clean

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test,latent,cluster,docs]'
	@touch $@

setup: $(VENV)/.installed

## Run the default suite end to end (no downloads) and print where the report is. `benchmark run`
## wraps snakemake: a re-run after a kill needs no `snakemake --unlock` (see docs/running.md).
demo: setup
	$(PY) -m benchmark run --suite $(SUITE) --cores $(CORES) -- --quiet rules
	@echo "report: $(abspath reports/$(SUITE)/index.html)"

## The test suite (slow and perf tests excluded; see test-all / perf).
test: setup
	$(PY) -m pytest -q

test-all: setup
	$(PY) -m pytest -q -m "not perf"

## Throughput vs bare-PyTorch baselines, printed as a ratio table (on CUDA also bf16 MFU).
perf: setup
	$(PY) -m pytest -q -m perf tests/perf --benchmark-only

## A real Slurm cluster on this machine (installs slurm-wlm + munge as root if missing) runs the
## smoke suite through profiles/slurm; its results.csv must equal a local run's.
# On a CUDA machine: the bf16 DDPM++ step's MFU and ratio, the CUDA precision test (tests/perf/device_check.sh).
device-check: setup
	PY=$(abspath $(PY)) bash tests/perf/device_check.sh

test-cluster: setup
	$(PY) -m pip install -q --disable-pip-version-check -e '.[cluster]'
	PY=$(abspath $(PY)) bash tests/cluster/run_slurm.sh

lint: setup
	$(VENV)/bin/ruff check .

## docs/cost.md: `benchmark plan` of every paper suite on 8 x A100-80GB (the README's "What will it cost?").
cost: setup
	$(PY) -m benchmark.plan.costdoc --out docs/cost.md

smoke: setup
	$(PY) -m benchmark run --suite smoke --cores $(CORES) -- --quiet rules
	@echo "report: $(abspath reports/smoke/index.html)"

## Snakemake's own report (captions, categories, runtime statistics) of a finished suite.
snakemake-report: setup
	$(VENV)/bin/snakemake --config suite=$(SUITE) --report reports/$(SUITE)/snakemake-report.html
	@echo "snakemake report: $(abspath reports/$(SUITE)/snakemake-report.html)"

## The documentation site (docs/, mkdocs.yml) into site/, offline; --strict: a broken link fails.
docs: setup
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site
	@echo "docs: $(abspath site/index.html)"

## The figure the README and the docs home show, copied from a finished `make demo` (quick suite).
DOCS_FIGURE := reports/quick/plots/nfe_digits_fd-digitnet_digitnet.png
docs-figure:
	@test -f $(DOCS_FIGURE) || { echo "error: $(DOCS_FIGURE) not found — run \`make demo\` first" >&2; exit 2; }
	cp $(DOCS_FIGURE) docs/img/quick-digits-fd-vs-nfe.png
	@echo "docs figure: $(abspath docs/img/quick-digits-fd-vs-nfe.png)"

clean:
	rm -rf results/*/ reports/*/ .snakemake site
