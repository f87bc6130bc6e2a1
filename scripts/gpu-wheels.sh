#!/usr/bin/env bash
# Build the wheel folder that scripts/gpu-check.sh installs on a GPU node without network.
#
#   bash scripts/gpu-wheels.sh [--out DIR] [--with-simpleitk] [--budget-mib N]
#
# The node (Python 3.12, a CUDA torch, torchvision, numpy, scipy, pandas, jinja2, matplotlib,
# typer, rich, tqdm, pytest, scikit-image) lacks the rest of what `sam2-3dmed` imports. This
# gets exactly those, as Python 3.12 manylinux x86_64 wheels, at the versions this
# checkout's .venv has (so the node runs what CI tested):
#   - binary wheels from the index (pip download --only-binary=:all: --no-deps);
#   - sam2 1.1.0, an sdist, built here as a pure-Python wheel (SAM2_BUILD_CUDA=0, no CUDA
#     extension, no build isolation: nothing pulls a CUDA torch into a build env);
#   - antlr4-python3-runtime 4.9.3 and iopath 0.1.10 (hydra-core's and sam2's dependencies),
#     sdists only on PyPI, built the same way (pure Python, py3-none-any).
# What the node has (its published package list of 2026-11-17): it has PyYAML, attrs, portalocker, packaging, pillow, typing-extensions and
# pytest-timeout, but not jsonschema and its own dependencies (jsonschema-specifications,
# referencing, rpds-py), which sam2_3dmed.config needs: those are in the folder too.
# gpu-check.sh installs a wheel only where the node lacks that distribution, so a wheel that
# turns out to be there already is skipped, not doubled.
# SimpleITK (~50 MB) is left out: sam2_3dmed imports it lazily (data/readers.py), only for
# NRRD/MetaImage/DICOM, and the check reads and writes NIfTI only. --with-simpleitk adds it.
#
# Default folder: .gpu-wheels/ (git-ignored). Copy it to the node beside the checkout (or
# upload it with the checkout).
# Fails when the folder plus the repository's tracked files exceed the upload budget
# (64 MiB, less a margin for untracked files).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)

OUT=.gpu-wheels
WITH_SITK=0
BUDGET_MIB=64
MARGIN_MIB=4          # untracked-but-not-ignored files, the check's own small outputs
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT=$2; shift 2 ;;
    --with-simpleitk) WITH_SITK=1; shift ;;
    --budget-mib) BUDGET_MIB=$2; shift 2 ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "gpu-wheels: error: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

PY=${PYTHON:-$REPO/.venv/bin/python}
[ -x "$PY" ] || { echo "gpu-wheels: error: $PY not found: run scripts/setup.sh first (the versions come from .venv)" >&2; exit 2; }

version() {  # the version .venv has of distribution $1
  "$PY" - "$1" <<'EOF'
import importlib.metadata as md, sys
try:
    print(md.version(sys.argv[1]))
except md.PackageNotFoundError:
    sys.exit(f"gpu-wheels: error: {sys.argv[1]} is not installed in .venv; cannot pin its version")
EOF
}

# runtime packages the node lacks (binary or pure wheels on the index)
BINARY=(monai nibabel hydra-core omegaconf jsonschema jsonschema-specifications referencing rpds-py)
# sdists on PyPI: built here, pure Python
SDIST=(antlr4-python3-runtime iopath)
[ "$WITH_SITK" = 1 ] && BINARY+=(SimpleITK)

pins=()
for p in "${BINARY[@]}"; do pins+=("$p==$(version "$p")"); done
spins=()
for p in "${SDIST[@]}"; do spins+=("$p==$(version "$p")"); done
sam2_pin="sam2==$(version sam2)"

tmp=$(mktemp -d "${OUT%/}.tmp-XXXXXX")
trap 'rm -rf "$tmp"' EXIT
echo "gpu-wheels: downloading ${pins[*]}"
"$PY" -m pip download -q --only-binary=:all: --no-deps --python-version 3.12 \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 -d "$tmp" "${pins[@]}"
echo "gpu-wheels: building pure-Python wheels of ${spins[*]} $sam2_pin"
SAM2_BUILD_CUDA=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation --no-cache-dir -w "$tmp" "${spins[@]}" "$sam2_pin"

# every wheel must install on CPython 3.12 / x86_64 Linux; built ones must be pure
"$PY" - "$tmp" <<'EOF'
import sys, zipfile
from pathlib import Path
bad = []
for w in sorted(Path(sys.argv[1]).glob("*.whl")):
    tags = w.name[:-4].split("-")[-3:]
    py, abi, plat = tags
    if not (py in ("py3", "cp312") or py.startswith("py3") or "cp312" in py):
        bad.append(f"{w.name}: python tag {py}")
    if plat != "any" and "x86_64" not in plat:
        bad.append(f"{w.name}: platform {plat}")
    if w.name.startswith(("sam2-", "iopath-", "antlr4")) and (plat != "any" or any(
            n.endswith((".so", ".pyd")) for n in zipfile.ZipFile(w).namelist())):
        bad.append(f"{w.name}: expected a pure-Python wheel")
if bad:
    sys.exit("gpu-wheels: error: " + "; ".join(bad))
EOF

( cd "$tmp" && sha256sum ./*.whl | sed 's# \./# #' > SHA256SUMS )
rm -rf "$OUT"
mv "$tmp" "$OUT"
trap - EXIT

wheels_b=$(du -cb "$OUT"/* | tail -1 | cut -f1)
if git -C "$REPO" rev-parse --git-dir >/dev/null 2>&1; then
  repo_b=$(git -C "$REPO" ls-files -z | (cd "$REPO" && xargs -0 du -cb 2>/dev/null) | awk '$2 == "total" {s += $1} END {print s + 0}')
else
  repo_b=$(du -sb --exclude=.git --exclude=.venv --exclude="$OUT" "$REPO" | cut -f1)
fi
mib() { awk -v b="$1" 'BEGIN {printf "%.2f MiB", b / 1048576}'; }
budget_b=$(( BUDGET_MIB * 1048576 ))
total_b=$(( wheels_b + repo_b + MARGIN_MIB * 1048576 ))
echo "gpu-wheels: $(ls "$OUT"/*.whl | wc -l) wheels in $OUT:"
ls -l "$OUT"/*.whl | awk '{printf "  %9d  %s\n", $5, $NF}'
echo "gpu-wheels: wheels $(mib "$wheels_b") + repository tracked files $(mib "$repo_b") + margin ${MARGIN_MIB} MiB" \
     "= $(mib "$total_b") of the ${BUDGET_MIB} MiB upload budget"
if [ "$total_b" -gt "$budget_b" ]; then
  echo "gpu-wheels: error: over the ${BUDGET_MIB} MiB budget by $(mib $(( total_b - budget_b ))) (leave out SimpleITK?)" >&2
  exit 1
fi
