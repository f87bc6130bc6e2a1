#!/usr/bin/env bash
# The prepared, one-command GPU check (benchmarks/gpu_check.py; what it measures: its
# docstring and benchmarks/README.md "GPU check").
#
#   bash scripts/gpu-check.sh --out DIR [--wheels DIR] [--venv DIR] [--dry-run] [-- GPU_CHECK_ARGS...]
#
# On a GPU node (no network): makes a venv with --system-site-packages (the node's CUDA
# torch, torchvision, numpy, ... are used as they are), installs from the wheel folder
# (scripts/gpu-wheels.sh; default .gpu-wheels/, else shared/gpu-wheels/) every wheel whose
# distribution the node lacks (pip --no-index --no-deps), puts src/ on PYTHONPATH and runs
# benchmarks/gpu_check.py. Without a CUDA device it stops at once, saying so (exit 3).
#
# --dry-run: CPU, small settings, the current environment (the repo's .venv when there is
# one), no wheels: checks the plumbing in CI (tests/test_gpu_check.py).
#
# Everything is logged to DIR/gpu-check.log as well as stdout; the results are in
# DIR/gpu_check.json (python benchmarks/run_all.py --from-gpu-check DIR -> RESULTS.md).
# Exit status: 0 every step ok; 1 a step failed (the JSON says which); 2 usage; 3 no CUDA;
# 4 the environment could not be set up.
set -uo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)

OUT="" WHEELS="" VENV="" DRY=0 EXTRA=()
usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "gpu-check: error: $1" >&2; exit "${2:-2}"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --out) [ $# -ge 2 ] || die "--out needs a folder"; OUT=$2; shift 2 ;;
    --wheels) [ $# -ge 2 ] || die "--wheels needs a folder"; WHEELS=$2; shift 2 ;;
    --venv) [ $# -ge 2 ] || die "--venv needs a folder"; VENV=$2; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done
[ -n "$OUT" ] || die "--out DIR is required (see --help)"
mkdir -p "$OUT" || die "cannot create $OUT"
OUT=$(cd "$OUT" && pwd)
LOG="$OUT/gpu-check.log"
: > "$LOG"
exec > >(tee -a "$LOG") 2>&1
say() { echo "[gpu-check] $*"; }
say "$(date -Is) on $(hostname); repo $REPO; out $OUT; $([ "$DRY" = 1 ] && echo DRY RUN || echo GPU run)"

export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 SAM2_3DMED_NO_PROGRESS=1 MPLBACKEND=Agg PIP_DISABLE_PIP_VERSION_CHECK=1

if [ "$DRY" = 1 ]; then
  if [ -x "$REPO/.venv/bin/python" ]; then PY="$REPO/.venv/bin/python"; else PY=$(command -v python3 || command -v python); fi
  [ -n "$PY" ] || die "no python found" 4
  say "dry run: $PY ($("$PY" -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__)' 2>&1))"
  "$PY" "$REPO/benchmarks/gpu_check.py" --out "$OUT" --dry-run "${EXTRA[@]}"
  rc=$?
  say "exit $rc; results: $OUT/gpu_check.json; log: $LOG"
  exit $rc
fi

# ---------------------------------------------------------------- GPU node
BASE=${PYTHON:-$(command -v python3 || command -v python)}
[ -n "$BASE" ] || die "no python3 on this node" 4
cuda=$("$BASE" -c 'import torch; print(torch.cuda.is_available(), torch.__version__, torch.version.cuda)' 2>&1) \
  || die "the node's python cannot import torch: $(echo "$cuda" | tail -1)" 4
case "$cuda" in
  True*) ;;
  *) die "no CUDA device visible to torch on $(hostname) (torch/cuda: ${cuda#* }; CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-unset}): run it on a GPU node (srun --gpus=1 ...), or pass --dry-run for the CPU rehearsal" 3 ;;
esac
say "node python: $BASE ($("$BASE" -c 'import sys; print(sys.version.split()[0])')), torch ${cuda#True }"
"$BASE" -c 'import torch; p = torch.cuda.get_device_properties(0); print(f"[gpu-check] card: {torch.cuda.get_device_name(0)}, compute capability {p.major}.{p.minor}, {p.total_memory / 2**30:.0f} GiB, {torch.cuda.device_count()} visible")'
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total --format=csv,noheader | sed 's/^/[gpu-check] nvidia-smi: /'

if [ -z "$WHEELS" ]; then
  for w in "$REPO/.gpu-wheels" "$REPO/shared/gpu-wheels"; do [ -d "$w" ] && { WHEELS=$w; break; }; done
fi
[ -n "$WHEELS" ] && [ -d "$WHEELS" ] || die "no wheel folder (--wheels DIR; build it with bash scripts/gpu-wheels.sh)" 4
WHEELS=$(cd "$WHEELS" && pwd)
ls "$WHEELS"/*.whl >/dev/null 2>&1 || die "no .whl files in $WHEELS" 4
if [ -f "$WHEELS/SHA256SUMS" ]; then
  (cd "$WHEELS" && sha256sum --quiet -c SHA256SUMS) || die "wheels in $WHEELS do not match their SHA256SUMS (damaged copy?)" 4
fi

VENV=${VENV:-${TMPDIR:-/tmp}/sam2-3dmed-gpu-check-venv}
# The node's python3 may itself be a venv (e.g. /opt/torch/.venv): a venv made from
# it with --system-site-packages sees the BASE interpreter's packages, not torch. So the
# outer venv's site-packages are added to the new one by a .pth file (after the new venv's
# own, where --system-site-packages would put them); the venv must then import a CUDA torch,
# else the wheels go to a --target folder on PYTHONPATH with the node's python3.
make_venv() {
  rm -rf "$VENV"
  "$BASE" -m venv --system-site-packages "$VENV" 2>/dev/null \
    || "$BASE" -m venv --system-site-packages --without-pip "$VENV" || return 1
  local site outer
  site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') || return 1
  outer=$("$BASE" -c 'import site, sys
if sys.prefix != sys.base_prefix:
    print("\n".join(p for p in site.getsitepackages() if p.startswith(sys.prefix)))')
  if [ -n "$outer" ]; then
    printf '%s\n' "$outer" > "$site/zz_node_venv.pth"
    say "the node's python is a venv: its site-packages reach the new venv through $site/zz_node_venv.pth"
  fi
}
cuda_ok() { "$1" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; }
PY="" SITE=""
if [ -x "$VENV/bin/python" ] && cuda_ok "$VENV/bin/python"; then
  PY="$VENV/bin/python"; say "reusing venv $VENV"
else
  say "venv $VENV (--system-site-packages)"
  if make_venv && cuda_ok "$VENV/bin/python"; then
    PY="$VENV/bin/python"
  else
    SITE=${TMPDIR:-/tmp}/sam2-3dmed-gpu-check-site
    say "the venv does not import the node's CUDA torch: wheels go to $SITE (pip --target) on PYTHONPATH instead"
    mkdir -p "$SITE"
    export PYTHONPATH="$SITE:$PYTHONPATH"
    PY=$BASE
  fi
fi
# the node's distributions are visible here: install only the wheels of those it lacks
mapfile -t TODO < <("$PY" - "$WHEELS" <<'EOF'
import importlib.metadata as md, sys
from pathlib import Path
for w in sorted(Path(sys.argv[1]).glob("*.whl")):
    name, version = w.name.split("-")[:2]
    try:
        have = md.version(name)
    except md.PackageNotFoundError:
        have = None
    if have is None:
        print(w)
    else:
        print(f"[gpu-check] present on the node: {name} {have} (wheel {version} not installed)", file=sys.stderr)
EOF
)
if [ "${#TODO[@]}" -gt 0 ]; then
  say "installing ${#TODO[@]} wheel(s): $(for t in "${TODO[@]}"; do basename "$t"; done | tr '\n' ' ')"
  target=()
  [ -n "$SITE" ] && target=(--target "$SITE" --upgrade)
  if "$PY" -m pip --version >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-cache-dir --no-build-isolation "${target[@]}" "${TODO[@]}" \
      || die "pip install of the wheels failed" 4
  else  # no pip at all: a wheel is a zip of files for site-packages (these have no scripts to install)
    say "no pip on the node: unpacking the wheels into site-packages"
    "$PY" - "$SITE" "${TODO[@]}" <<'EOF' || die "unpacking the wheels failed" 4
import sys, sysconfig, zipfile
site = sys.argv[1] or sysconfig.get_paths()["purelib"]
for w in sys.argv[2:]:
    zipfile.ZipFile(w).extractall(site)
EOF
  fi
fi
missing=$("$PY" -c '
import importlib
mods = ["torch", "sam2", "sam2.build_sam", "monai", "nibabel", "hydra", "omegaconf", "iopath", "jsonschema", "yaml", "typer", "rich", "scipy", "pandas", "jinja2", "PIL", "sam2_3dmed.cli"]
bad = []
for m in mods:
    try:
        importlib.import_module(m)
    except Exception as exc:
        bad.append(f"{m} ({type(exc).__name__}: {exc})")
print("; ".join(bad))' 2>&1)
[ -z "$missing" ] || die "still not importable after installing the wheels: $missing" 4
say "environment ready: $("$PY" -c 'import importlib.metadata as m; print(", ".join(f"{d} {m.version(d)}" for d in ("torch", "sam2", "monai", "nibabel", "hydra-core", "numpy")))')"

"$PY" "$REPO/benchmarks/gpu_check.py" --out "$OUT" "${EXTRA[@]}"
rc=$?
say "exit $rc; results: $OUT/gpu_check.json; log: $LOG"
exit $rc
