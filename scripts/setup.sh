#!/usr/bin/env bash
# One-shot, idempotent set-up of the project's virtual environment (.venv).
# CPU machines: torch is pinned to the CPU wheel; sam2 is built without CUDA and
# without build isolation (see README "Installation"). Re-running is cheap.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
SAM2_SPEC=${SAM2_SPEC:-sam2==1.1.0}

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtual environment $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)

stamp="$VENV/.sam2_3dmed-setup"
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "[setup] $VENV is up to date"
  exit 0
fi

if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  echo "[setup] installing $TORCH_SPEC"
  "${PIP[@]}" install "$TORCH_SPEC"
fi
if ! "$VENV/bin/python" -c "import sam2" 2>/dev/null; then
  echo "[setup] installing $SAM2_SPEC (no CUDA extension, no build isolation)"
  "${PIP[@]}" install setuptools wheel
  SAM2_BUILD_CUDA=0 "${PIP[@]}" install --no-deps --no-build-isolation "$SAM2_SPEC"
fi
echo "[setup] installing sam2-3dmed and its dependencies (nnU-Net v2 included: the nnunet extra)"
# the installed torch is a constraint: nnunetv2 pulls torchvision, whose newest release
# would otherwise bring its own (CUDA) torch
constraints="$VENV/.torch-constraint.txt"
"$VENV/bin/python" -c 'import torch; print("torch==" + torch.__version__.split("+")[0])' > "$constraints"
"${PIP[@]}" install -c "$constraints" -e ".[workflow,dev,nnunet]"
# On a CPU torch, the torchvision wheel of the package registry (a CUDA build, pulled in by
# nnunetv2 -> dynamic-network-architectures -> timm) cannot load its operators and breaks
# every `import torchvision`. Nothing here needs it (nnU-Net's default U-Nets, our SAM2
# modules and SAM2's video predictor do not import it), so it goes, as before nnunetv2.
if "$VENV/bin/python" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("torchvision") is None)' \
   && ! "$VENV/bin/python" -c 'import torchvision' 2>/dev/null; then
  echo "[setup] removing torchvision: a CUDA build this torch ($(cat "$constraints")) cannot load"
  "${PIP[@]}" uninstall -y torchvision
fi
echo "$want" > "$stamp"
echo "[setup] done: $("$VENV/bin/python" -c 'import torch, sam2, monai; print("torch", torch.__version__, "| monai", monai.__version__)')"
