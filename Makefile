# Entry points. Every target sets up .venv first (idempotent, fast when up to date).
# Variables (make VAR=value target):
#   CORES=N                   cores Snakemake may use for the demo (default 2)
#   SNAKEMAKE_PROFILE=slurm   run the demo's jobs on SLURM (./slurm); unset or empty: locally
#   SNAKEMAKE_ARGS="..."      extra snakemake arguments for the demo, e.g. --dry-run
#   VARIANTS=a,b              the demo's variants instead of config/demo.yaml's (full), e.g.
#                             VARIANTS=full,nnunet adds the nnU-Net v2 reference arm (small budget)
#   PYTEST_ARGS="..."         extra pytest arguments for test and test-fast
#   BENCH_ARGS="..."          arguments of benchmarks/run_all.py, e.g. --skip quality
VENV ?= .venv
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export DVC_NO_ANALYTICS := 1
CORES ?= 2
SNAKEMAKE_PROFILE ?=
SNAKEMAKE_ARGS ?=
VARIANTS ?=
PYTEST_ARGS ?=
BENCH_ARGS ?=
# pytest exits 5 when it selects no test: that is not a failure of the suite
PYTEST = rc=0; pytest $(1) $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest: no tests selected"; exit 0; fi; exit $$rc

.PHONY: setup demo test test-fast bench clean-demo

setup:
	./scripts/setup.sh

## CPU demo on synthetic MSD-format data: the Snakemake workflow with config/demo.yaml
# (the profile is passed on the command line only: Snakemake reads an exported
# SNAKEMAKE_PROFILE itself, and an empty one stops it)
demo: setup
	SNAKEMAKE_PROFILE='$(SNAKEMAKE_PROFILE)' bash scripts/workflow.sh config/demo.yaml $(CORES) \
		$(if $(VARIANTS),--config 'run={variants: [$(VARIANTS)]}') $(SNAKEMAKE_ARGS)

## every test, slow ones included
test: setup
	@$(call PYTEST,)

## every test not marked slow (quick local loops)
test-fast: setup
	@$(call PYTEST,-m "not slow")

## every benchmark, then benchmarks/RESULTS.md
bench: setup
	python benchmarks/run_all.py $(BENCH_ARGS)

clean-demo:
	rm -rf data/demo results/demo .snakemake
