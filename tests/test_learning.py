"""Learning test, then the trained model end to end: evaluate and predict in native space.

Training: the demo settings (random init, no SAM2 weights offline, so the encoder is
trained; 128 px; the full variant; config/demo.yaml's 250 steps) must reach 3D Dice >= 0.8
on fold 0's held-out validation cases. The budget is a step count, not a timer (timed
assertions are flaky on shared machines); training takes about 8 minutes on a 2-core CPU
and prints its time.

The same model then goes through ``evaluate`` (auto and prompted mode, scored against the
original label files of cases stored in several orientations) and ``predict`` on NIfTI,
NRRD and DICOM versions of a validation scan: a mistake anywhere in the geometry chain
would put the mask in the wrong place and the Dice near 0.
"""

import csv
import json
import os
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from sam2_3dmed.config import load_config
from sam2_3dmed.data.io import load_nifti
from sam2_3dmed.data.prepare import prepare_target
from sam2_3dmed.data.synth import synth_task
from sam2_3dmed.data.prepared import PreparedTarget
from sam2_3dmed.infer.inference import dice
from sam2_3dmed.train.trainer import train

from _cli import run_cli

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


DEMO_RUN = REPO / "results" / "demo" / "runs" / "spleen" / "full" / "fold0"


def _demo_run_problem(cfg) -> str | None:
    """Why the demo's finished run is not the model this module would train, or None.

    It is the same model when it finished ``config/demo.yaml``'s steps, with its model,
    train and split settings, trained by this exact package code (``code_digest`` in its
    train_summary.json): the same code, config and seeds, so the same computation."""
    from sam2_3dmed.code_digest import package_digest
    from sam2_3dmed.config import variant_config
    from sam2_3dmed.model.checkpoint import load_checkpoint

    if not (DEMO_RUN / "train_summary.json").is_file() or not (DEMO_RUN / "last.pt").is_file():
        return f"no finished demo run in {DEMO_RUN} (make demo)"
    summary = json.loads((DEMO_RUN / "train_summary.json").read_text())
    if summary.get("code_digest") != package_digest():
        return f"the demo run was trained by other code (digest {summary.get('code_digest')}, now {package_digest()})"
    if summary["steps"] != cfg["train"]["steps"]:
        return f"the demo run has {summary['steps']} steps, config/demo.yaml {cfg['train']['steps']}"
    stored, want = load_checkpoint(DEMO_RUN / "last.pt")["config"], variant_config(cfg, "full")
    if {k: stored[k] for k in ("model", "train", "splits")} != {k: want[k] for k in ("model", "train", "splits")}:
        return "the demo run was trained with other settings than config/demo.yaml's"
    return None


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Train with the demo settings, or take the demo run when it is the same model.

    ``make demo`` trains exactly this model (same config, data seed and code), so when the
    demo's run in results/demo is finished and matches (see :func:`_demo_run_problem`:
    steps, settings, and the package's code digest) the module uses it instead of training
    the same model a second time; otherwise it trains its own (~8 min).
    SAM2_3DMED_REUSE_DEMO=1 requires the demo run (the tests fail, never skip, if it does
    not match); SAM2_3DMED_REUSE_DEMO=0 always trains.
    """
    root = tmp_path_factory.mktemp("learning")
    cfg = load_config(REPO / "config" / "demo.yaml")
    reuse = os.environ.get("SAM2_3DMED_REUSE_DEMO", "")
    problem = None if reuse == "0" else _demo_run_problem(cfg)
    if reuse == "1":
        assert problem is None, f"SAM2_3DMED_REUSE_DEMO=1 but {problem}"
    if reuse != "0" and problem is None:
        print(f"\nlearning tests: using the demo's finished run {DEMO_RUN} (same code, config and seeds)")
        return {"root": root, "cfg": cfg, "task": REPO / cfg["data"]["root"] / "Task09_Spleen",
                "prep": REPO / cfg["data"]["prepared"] / "spleen", "run": DEMO_RUN, "minutes": float("nan")}
    if reuse != "0":
        print(f"\nlearning tests: training the demo model here: {problem}")
    syn = cfg["data"]["synthetic"]
    task = synth_task("Task09_Spleen", root / "raw", cases=syn["cases"], test_cases=0,
                      seed=syn["seed"], size=syn["size"])
    prep = prepare_target(task, "spleen", root / "prep", cfg)
    t0 = time.perf_counter()
    out = train(cfg, "spleen", "full", 0, root / "run", prepared=prep, device="cpu")
    return {"root": root, "cfg": cfg, "task": task, "prep": prep, "run": out,
            "minutes": (time.perf_counter() - t0) / 60}


@pytest.mark.timeout(1500)
def test_full_variant_learns_synthetic_spleen(trained):
    cfg, out = trained["cfg"], trained["run"]
    rows = list(csv.DictReader((out / "val_log.csv").open()))
    final = rows[-1]
    n_val = len(final) - 2
    d = float(final["mean_dice"])
    print(f"\nfull variant, {final['step']} steps, {n_val} validation cases: 3D Dice {d:.4f}, "
          f"{trained['minutes']:.1f} min")
    assert int(final["step"]) == cfg["train"]["steps"] and n_val >= 2
    assert d >= 0.8, rows


def test_evaluate_scores_auto_and_prompted_in_original_space(trained):
    out = trained["root"] / "eval"
    # the main modes (the studies' modes run in the demo and in tests/test_studies.py)
    r = run_cli("evaluate", "--config", REPO / "config" / "demo.yaml", "--target", "spleen", "--fold", "0",
                "--run", trained["run"], "--prepared", trained["prep"], "--out", out, "--device", "cpu",
                "--no-studies")
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    val = PreparedTarget(trained["prep"]).cases(0, "val")
    modes = ("auto", "prompted", "prompted_k3")  # evaluate.prompt_counts [1, 3]
    assert sorted((x["case_id"], x["mode"]) for x in rows) == sorted((c, m) for c in val for m in modes)
    fp = json.loads((trained["prep"] / "fingerprint.json").read_text())
    orientations = {c["original_axcodes"] for c in fp["cases"] if c["case_id"] in val}
    summary = json.loads((out / "summary.json").read_text())
    m = summary["metrics"]
    print(f"\nevaluate ({len(val)} cases, orientations {sorted(orientations)}): "
          + ", ".join(f"{mode} Dice {m[mode]['dice']['mean']:.4f} HD95 {m[mode]['hd95']['mean']:.2f} mm "
                      f"NSD {m[mode]['nsd']['mean']:.4f}" for mode in modes))
    for mode in modes:
        assert m[mode]["dice"]["n"] == len(val)
        assert m[mode]["dice"]["mean"] >= 0.75, m[mode]
        assert m[mode]["hd95"]["mean"] < 20.0, m[mode]
    for x in rows:
        assert float(x["seconds"]) > 0 and float(x["slices_per_s"]) > 0 and float(x["peak_mem_mb"]) > 0
        assert x["prompt"] == ("" if x["mode"] == "auto" else "box")
        assert int(x["n_prompts"]) == {"auto": 0, "prompted": 1}.get(x["mode"], 3)
    assert summary["synthetic"] is True and summary["space"].startswith("original")
    # the same output again is refused, not overwritten
    again = run_cli("evaluate", "--config", REPO / "config" / "demo.yaml", "--target", "spleen", "--fold", "0",
                    "--run", trained["run"], "--prepared", trained["prep"], "--out", out, "--device", "cpu")
    assert again.returncode == 1 and "--overwrite" in again.stderr


def test_predict_nifti_nrrd_and_dicom_on_the_input_grid(trained, tmp_path):
    from sam2_3dmed.data.readers import read_image, write_dicom_series, write_sitk

    fp = json.loads((trained["prep"] / "fingerprint.json").read_text())
    val = PreparedTarget(trained["prep"]).cases(0, "val")
    rec = next(c for c in fp["cases"] if c["case_id"] == val[0])
    image = load_nifti(trained["task"] / rec["image"])
    ckpt = trained["run"] / "best.pt"

    nrrd = tmp_path / "ct.nrrd"
    write_sitk(image.data, image.affine, nrrd)
    dcm = tmp_path / "dicom"
    write_dicom_series(np.rint(image.data).astype(np.int16), image.affine, dcm)
    masks = {}
    for name, src in (("nifti", trained["task"] / rec["image"]), ("nrrd", nrrd), ("dicom", dcm)):
        out = tmp_path / f"{name}.nii.gz"
        r = run_cli("predict", ckpt, src, out, "--device", "cpu")
        assert r.returncode == 0, r.stderr
        img = nib.load(str(out))
        ref = read_image(src)
        assert img.shape == ref.data.shape and np.allclose(img.affine, ref.affine, atol=1e-3), name
        # DICOM stacks slices along the normal, so a left-handed grid comes back with k reversed:
        # compare everything in the closest canonical (RAS) orientation
        masks[name] = np.asarray(nib.as_closest_canonical(img).dataobj) > 0
    gt = np.asarray(nib.as_closest_canonical(nib.load(str(trained["task"] / rec["label"]))).dataobj) > 0
    d = {k: round(dice(v, gt), 4) for k, v in masks.items()}
    print(f"\npredict {val[0]} ({rec['original_axcodes']}): Dice vs ground truth {d}")
    assert d["nifti"] >= 0.75
    assert dice(masks["nrrd"], masks["nifti"]) >= 0.99 and dice(masks["dicom"], masks["nifti"]) >= 0.97
