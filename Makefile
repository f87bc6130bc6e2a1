# Entry points. Every target sets up .venv first (idempotent, fast when up to date).
VENV ?= .venv
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export DVC_NO_ANALYTICS := 1
CORES ?= 2
# SNAKEMAKE_PROFILE=slurm runs the demo's jobs on SLURM (scripts/workflow.sh)
SNAKEMAKE_PROFILE ?=
export SNAKEMAKE_PROFILE
PYTEST_ARGS ?=

.PHONY: setup demo test bench clean-demo

setup:
	./scripts/setup.sh

## CPU demo on synthetic MSD-format data: the Snakemake workflow with config/demo.yaml
demo: setup
	bash scripts/workflow.sh config/demo.yaml $(CORES)

## all tests, slow ones included (pytest exits 5 when nothing is selected: not a failure)
test: setup
	@pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest: no tests selected"; exit 0; fi; exit $$rc

## every benchmark, then benchmarks/RESULTS.md (BENCH_ARGS="--skip quality" for the fast ones)
BENCH_ARGS ?=
bench: setup
	python benchmarks/run_all.py $(BENCH_ARGS)

clean-demo:
	rm -rf data/demo results/demo .snakemake
