"""The shared tiny task and config of the tests that train, evaluate or break things.

``tiny_config(**sections)`` is the smallest config that trains and evaluates in seconds,
with a test module's own sections merged over it; ``make_tiny_target(root, config)``
synthesises the 4-case spleen task, writes the config and prepares the target (what the
train, fault, bad-input and U-Net tests start from). Workflow tests build their Snakemake
config from the same base (``_snakemake.tiny_workflow_config``).
"""

from dataclasses import dataclass
from pathlib import Path

import yaml

from sam2_3dmed.config import deep_merge, load_config

#: 64 px, the tiny backbone from random init with one adapter block and one SRPP layer,
#: clips of 3, 6 steps, one validation case, auto mode only (no studies).
TINY_CONFIG = {
    "splits": {"folds": 2, "test_fraction": 0.0},
    "targets": {"spleen": {"spacing_mm": [1.5, 1.5]}},
    "model": {"image_size": 64, "pretrained": False, "adapter_blocks": 1, "srpp_layers": 1},
    "train": {"clip_length": 3, "steps": 6, "warmup_steps": 2, "checkpoint_every": 2, "val_every": 3,
              "num_workers": 0, "val_max_cases": 1, "lr": 1e-3, "lr_encoder": 1e-4},
    # the direction study off (two more propagations per case); tests/test_studies.py turns it on
    "evaluate": {"modes": ["auto"], "directions": False},
    "run": {"targets": ["spleen"]},
}


def tiny_config(**sections) -> dict:
    """:data:`TINY_CONFIG` with ``sections`` deep-merged over it."""
    return deep_merge(TINY_CONFIG, sections)


@dataclass
class TinyTarget:
    root: Path
    task: Path        # the synthetic MSD task folder
    cfg_path: Path    # the config as a YAML file (for the CLI)
    cfg: dict         # the same, loaded (defaults merged, validated)
    prepared: Path    # the prepared spleen target


def make_tiny_target(root: Path, config: dict, cases: int = 4, seed: int = 1, size: int = 48) -> TinyTarget:
    """A synthetic spleen task (4 cases, 48 px, seed 1) under ROOT, CONFIG as ROOT/cfg.yaml, and
    the target prepared with it into ROOT/prep."""
    from sam2_3dmed.data.prepare import prepare_target
    from sam2_3dmed.data.synth import synth_task

    task = synth_task("Task09_Spleen", root / "raw", cases=cases, test_cases=0, seed=seed, size=size)
    cfg_path = root / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(config))
    cfg = load_config(cfg_path)
    return TinyTarget(root, task, cfg_path, cfg, prepare_target(task, "spleen", root / "prep", cfg))


def tiny_sam_model():
    """The full SAM2-3dMed at 64 px from random init (seed 0), in eval mode: for tests of the
    propagation mechanics (not of quality)."""
    import torch

    from sam2_3dmed.config import variant_config
    from sam2_3dmed.model.factory import build_model

    cfg = load_config(None, {"model": {"image_size": 64, "pretrained": False, "adapter_blocks": 1, "srpp_layers": 1}})
    torch.manual_seed(0)
    return build_model(variant_config(cfg, "full")["model"]).eval()


def tiny_volume(n: int):
    """A (n, 40, 48) float32 volume in [0, 1) with a brighter block on slices 1..n-2 (seed 0)."""
    import numpy as np

    img = np.random.default_rng(0).random((n, 40, 48)).astype(np.float32) * 0.5
    img[1:n - 1, 10:30, 12:36] += 0.4
    return img
