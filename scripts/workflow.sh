#!/usr/bin/env bash
# Run the whole Snakemake workflow for one config: the one command behind `make demo` and
# both DVC stages. Usage: scripts/workflow.sh CONFIG [CORES]
# SNAKEMAKE_PROFILE=slurm runs every job on SLURM through the project's profile (./slurm).
# SNAKEMAKE_MAX_THREADS=N caps every job's threads (e.g. a test cluster that advertises
# more CPUs than the machine has).
set -euo pipefail
config=${1:?usage: scripts/workflow.sh CONFIG [CORES]}
# `dvc repro` from a shell without the project's venv activated: use the venv's tools
if ! command -v snakemake >/dev/null && [ -x .venv/bin/snakemake ]; then
  PATH="$PWD/.venv/bin:$PATH"
  export PATH
fi
cores=${2:-2}
args=(--cores "$cores" --config "config_file=$config")
if [ -n "${SNAKEMAKE_MAX_THREADS:-}" ]; then
  args+=(--max-threads "$SNAKEMAKE_MAX_THREADS")
fi
if [ -n "${SNAKEMAKE_PROFILE:-}" ]; then
  args+=(--profile "$SNAKEMAKE_PROFILE")
fi
exec snakemake "${args[@]}"
