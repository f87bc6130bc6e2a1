#!/usr/bin/env bash
# Run the whole Snakemake workflow for one config: the one command behind `make demo` and
# both DVC stages. Usage: scripts/workflow.sh CONFIG [CORES] [SNAKEMAKE ARGS...]
#   SNAKEMAKE_PROFILE=slurm   run every job on SLURM through the project's profile (./slurm);
#                             unset or empty: run the jobs here
#   SNAKEMAKE_MAX_THREADS=N   cap every job's threads (e.g. a test cluster that advertises
#                             more CPUs than the machine has)
# Extra arguments go to snakemake as they are (e.g. --dry-run).
set -euo pipefail
config=${1:?usage: scripts/workflow.sh CONFIG [CORES] [SNAKEMAKE ARGS...]}
cores=${2:-2}
shift $(( $# >= 2 ? 2 : 1 ))
# `dvc repro` from a shell without the project's venv activated: use the venv's tools
if ! command -v snakemake >/dev/null && [ -x .venv/bin/snakemake ]; then
  PATH="$PWD/.venv/bin:$PATH"
  export PATH
fi
args=(--cores "$cores" --configfile "$config")
if [ -n "${SNAKEMAKE_MAX_THREADS:-}" ]; then
  args+=(--max-threads "$SNAKEMAKE_MAX_THREADS")
fi
# Snakemake itself reads SNAKEMAKE_PROFILE as its default --profile, and an empty value
# stops it at once ("invalid profile name"): pass the profile explicitly, never through
# the environment.
profile=${SNAKEMAKE_PROFILE:-}
unset SNAKEMAKE_PROFILE
if [ -n "$profile" ]; then
  args+=(--profile "$profile")
fi
exec snakemake "${args[@]}" "$@"
