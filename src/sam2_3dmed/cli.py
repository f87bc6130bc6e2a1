"""The ``sam2-3dmed`` command line: a thin typer layer over the package.

Every command turns user-caused problems into a one-line error on stderr and a
non-zero exit; ``sam2-3dmed --debug COMMAND`` shows the full traceback instead.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import List, Optional

import typer

from . import __version__
from .console import console, peak_rss_mb, setup_logging  # noqa: F401
from .errors import UserError

app = typer.Typer(
    name="sam2-3dmed",
    help="SAM2-3dMed on the Medical Segmentation Decathlon: fetch, prepare, train, predict, evaluate, report.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

EXIT_USER_ERROR = 1


_T0 = time.perf_counter()


def _ok(message: str, cost: bool = False) -> None:
    """The command's one success line (plain, unwrapped: scripts and tests read it). With
    ``cost``: the wall time and peak memory of the whole command, exact (not sampled), what
    a scheduler's memory request must cover (benchmarks/bench_scale.py reads it from logs)."""
    if cost:
        message += f" ({time.perf_counter() - _T0:.0f} s, peak RSS {peak_rss_mb(children=True):.0f} MB)"
    typer.echo(f"ok {message}", err=True)

EXIT_INTERRUPTED = 130


def _version(value: bool) -> None:
    if value:
        typer.echo(f"sam2-3dmed {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks and debug logs."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    setup_logging(debug)


@app.command("fetch-msd")
def fetch_msd_cmd(
    task: str = typer.Argument(..., help="MSD task: Task06_Lung, Task07_Pancreas or Task09_Spleen."),
    out: Path = typer.Option(..., "--out", help="Folder that receives OUT/TASK/ (dataset.json, imagesTr, ...)."),
    url: Optional[str] = typer.Option(None, "--url", help="Download URL or a local .tar path (default: the MONAI mirror)."),
    md5: Optional[str] = typer.Option(None, "--md5", help="Expected MD5 of the tar (default: the known one for TASK)."),
    keep_archive: bool = typer.Option(False, "--keep-archive", help="Keep the downloaded tar in OUT after extraction."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing OUT/TASK (only after the new one is complete)."),
) -> None:
    """Download (resumably), verify and safely extract one MSD task."""
    from .data.fetch import fetch_msd

    dest = fetch_msd(task, out, url=url, md5=md5, keep_archive=keep_archive, overwrite=overwrite)
    _ok(f"{task} -> {dest}")


@app.command("fetch-weights")
def fetch_weights_cmd(
    name: str = typer.Argument(..., help="sam2.1_hiera_tiny, sam2.1_hiera_small, sam2.1_hiera_base_plus or sam2.1_hiera_large."),
    out: Path = typer.Option(..., "--out", help="Folder that receives OUT/NAME.pt."),
    url: Optional[str] = typer.Option(None, "--url", help="Download URL or a local .pt path (default: Meta's URL)."),
    sha256: Optional[str] = typer.Option(None, "--sha256", help="Expected SHA-256 of the file (default: the known one for NAME)."),
    no_verify: bool = typer.Option(False, "--no-verify", help="Skip the SHA-256 check (warns loudly); the weights are still checked to load."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing OUT/NAME.pt (only after the new one is verified)."),
) -> None:
    """Download (resumably) and verify Meta's SAM2.1 checkpoint NAME: SHA-256, safe load, keys and shapes."""
    from .model.weights import fetch_weights

    dest = fetch_weights(name, out, url=url, sha256=sha256, overwrite=overwrite, verify_hash=not no_verify)
    _ok(f"{name} -> {dest}")


@app.command("synth")
def synth_cmd(
    task: str = typer.Argument(..., help="MSD task to imitate: Task06_Lung, Task07_Pancreas or Task09_Spleen."),
    out: Path = typer.Option(..., "--out", help="Folder that receives OUT/TASK/ in exact MSD layout."),
    cases: int = typer.Option(12, "--cases", min=1, help="Number of labelled training cases (imagesTr/labelsTr)."),
    test_cases: int = typer.Option(2, "--test-cases", min=0, help="Number of unlabelled cases (imagesTs)."),
    seed: int = typer.Option(0, "--seed", min=0, help="Random seed; the same seed gives the same files."),
    size: int = typer.Option(160, "--size", min=32, max=1024, help="In-plane matrix size of each volume."),
    profile: str = typer.Option("small", "--profile",
                                help="Geometry: small (demo phantoms, 24-96 slices) or msd (the real task's slice "
                                     "counts and spacings; case 0 the longest, case 1 the shortest; use --size 512)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing OUT/TASK."),
) -> None:
    """Write a synthetic CT task in MSD layout (for demos, tests and scale rehearsals)."""
    from .data.synth import synth_task

    dest = synth_task(task, out, cases=cases, test_cases=test_cases, seed=seed, size=size, overwrite=overwrite,
                      profile=profile)
    _ok(f"synthetic {task} ({cases} cases) -> {dest}", cost=True)


@app.command("prepare")
def prepare_cmd(
    task_dir: Path = typer.Argument(..., help="An MSD task folder (with dataset.json)."),
    target: str = typer.Option(..., "--target", help="Target name from the config (spleen, pancreas, pancreas_tumour, lung_tumour, ...)."),
    out: Path = typer.Option(..., "--out", help="Output folder for the prepared target (created atomically)."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML config merged over the built-in defaults."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing OUT (only after the new one is complete)."),
) -> None:
    """Reorient, resample, window and crop every case; write fingerprint.json and splits.json."""
    from .config import load_config
    from .data.prepare import prepare_target

    cfg = load_config(config)
    dest = prepare_target(task_dir, target, out, cfg, overwrite=overwrite)
    _ok(f"prepared {target} -> {dest}", cost=True)


@app.command("train")
def train_cmd(
    config: Path = typer.Option(..., "--config", help="YAML config merged over the built-in defaults."),
    target: str = typer.Option(..., "--target", help="Target name from the config."),
    variant: str = typer.Option("full", "--variant", help="Variant from the config's `variants` (full, no_srpp, no_bd, sam2_ft, no_pretrain, unet3d, nnunet, ...); nnunet runs nnU-Net v2's trainer (after nnunet-plan)."),
    fold: int = typer.Option(0, "--fold", min=0, help="Cross-validation fold (splits.json of the prepared target)."),
    out: Path = typer.Option(..., "--out", help="Run folder: checkpoints, logs; an existing last.pt is resumed."),
    prepared: Optional[Path] = typer.Option(None, "--prepared", help="Prepared target folder (default: data.prepared/TARGET)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    restart_if_changed: bool = typer.Option(False, "--restart-if-changed", help="If OUT holds a run made with other settings or data, move it to OUT/superseded/ and start over (default: refuse)."),
    stop_after_step: Optional[int] = typer.Option(None, "--stop-after-step", hidden=True,
                                                  help="Testing aid: exit abruptly after this step (simulated kill)."),
) -> None:
    """Train SAM2-3dMed (or a reference arm) for one target, variant and fold; resumes from OUT/last.pt."""
    from .config import load_config, variant_config
    from .train.trainer import train

    cfg = load_config(config)
    on_change = "restart" if restart_if_changed else "error"
    if variant_config(cfg, variant)["model"]["arch"] == "nnunet":  # the nnU-Net reference arm: nnU-Net's trainer
        from .nnunet.training import train_nnunet

        dest = train_nnunet(cfg, target, variant, fold, out, prepared, device, on_change,
                            stop_after_epoch=stop_after_step)
    else:
        dest = train(cfg, target, variant, fold, out, prepared=prepared, device=device,
                     stop_after_step=stop_after_step, on_change=on_change)
    _ok(f"trained {target}/{variant}/fold {fold} -> {dest}", cost=True)


@app.command("nnunet-plan")
def nnunet_plan_cmd(
    config: Path = typer.Option(..., "--config", help="YAML config merged over the built-in defaults (its nnunet.* section)."),
    target: str = typer.Option(..., "--target", help="Target name from the config."),
    prepared: Optional[Path] = typer.Option(None, "--prepared", help="Prepared target folder (default: data.prepared/TARGET): its splits.json gives the cases and folds."),
    out: Optional[Path] = typer.Option(None, "--out", help="The target's nnU-Net folder: raw/, preprocessed/, nnunet_plan.json (default: nnunet.root/TARGET)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing OUT (only after the new one is complete)."),
) -> None:
    """nnU-Net v2 reference arm: the target's training cases in nnU-Net's raw format (labels
    merged as prepare merges them), our folds as splits_final.json, then
    nnUNetv2_plan_and_preprocess (nnU-Net's own planning). Needs the nnunet extra."""
    from .config import load_config
    from .nnunet import nnunet_root
    from .nnunet.dataset import plan_target

    cfg = load_config(config)
    dest = plan_target(cfg, target, prepared or Path(cfg["data"]["prepared"]) / target,
                       out or nnunet_root(cfg, target), overwrite=overwrite)
    _ok(f"planned nnU-Net for {target} -> {dest}", cost=True)


PREDICT_EPILOG = """\b
Examples (as with nnUNetv2_predict: a folder in, a folder out):
  # every scan of a folder, with the ensemble of a run's folds
  sam2-3dmed predict results/runs/spleen/full imagesTs/ predictions/
  # one scan, two checkpoints averaged, probabilities kept
  sam2-3dmed predict fold0/best.pt ct.nii.gz m.nii.gz --model fold1/best.pt --save-probabilities
  # prompted: a box on slice 40, a positive click on slice 52
  sam2-3dmed predict fold0/best.pt ct.nii.gz m.nii.gz --prompt-box 40,100,120,180,200
      --prompt-point 52,140,160
\b
Prompts are in the input's voxel indices: x = 1st array axis, y = 2nd,
z = 3rd (the axial slice), 0-based, as nibabel's dataobj\[x, y, z].
A --prompts file: {"boxes": \[\[z, x0, y0, x1, y1], ...],
"points": \[\[z, x, y], ...], "negatives": \[\[z, x, y], ...]}.
"""


@app.command("predict", epilog=PREDICT_EPILOG)
def predict_cmd(
    model: Path = typer.Argument(..., help="A trained checkpoint (best.pt), a fold's run folder, or a run folder holding fold*/ (the ensemble of its folds)."),
    input: Path = typer.Argument(..., help="A CT scan (NIfTI .nii/.nii.gz, NRRD, MHA, or a DICOM series folder), or a folder of them."),
    output: Path = typer.Argument(..., help="The label map (.nii.gz, exactly the input's grid and affine), or a folder (OUTPUT/<name>.nii.gz) when INPUT is a folder."),
    models: Optional[List[Path]] = typer.Option(None, "--model", help="Another checkpoint or run folder for the ensemble (repeatable); probabilities are averaged."),
    prompt_box: Optional[List[str]] = typer.Option(None, "--prompt-box", help="z,x0,y0,x1,y1: a box on slice z (repeatable, one per slice)."),
    prompt_point: Optional[List[str]] = typer.Option(None, "--prompt-point", help="z,x,y: a positive click (repeatable)."),
    prompt_negative: Optional[List[str]] = typer.Option(None, "--prompt-negative", help="z,x,y: a negative click, 'not the organ' (repeatable)."),
    prompts_file: Optional[Path] = typer.Option(None, "--prompts", help="A JSON file of boxes, points and negatives (see below)."),
    save_probabilities: bool = typer.Option(False, "--save-probabilities", help="Also write the fused foreground probability, <name>_prob.nii.gz: uint8 with scale 1/255 in the header (readers return 0..1)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    base_weights: Optional[Path] = typer.Option(None, "--base-weights", help="SAM2 weights the model was trained on (default: model.checkpoint of its config)."),
    largest_component: Optional[bool] = typer.Option(None, "--largest-component/--all-components", help="Keep only the largest connected component (default: the target's config)."),
    passes: Optional[str] = typer.Option(None, "--passes", help="Prompted mode: half (from the prompted slices outwards) or full (both directions over the whole volume)."),
    series_id: Optional[str] = typer.Option(None, "--series-id", help="DICOM SeriesInstanceUID when a folder holds several series."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs (a folder run otherwise skips cases already written)."),
) -> None:
    """Segment a scan or a folder of scans (auto mode, or prompted with boxes/clicks) with one model or an ensemble."""
    from .infer.predict import PredictOptions, predict
    from .infer.user_prompts import parse_prompts

    if passes not in (None, "half", "full"):
        raise UserError(f"--passes must be half or full, got {passes!r}")
    prompts = parse_prompts(prompt_box or [], prompt_point or [], prompt_negative or [], prompts_file)
    opts = PredictOptions(prompts=prompts, device=device, base_weights=base_weights,
                          largest_component=largest_component, passes=passes, series_id=series_id,
                          overwrite=overwrite, save_probabilities=save_probabilities)
    paths = [model, *(models or [])]
    from .nnunet import is_nnunet_path

    if any(is_nnunet_path(p) for p in paths):  # runs of the nnU-Net reference arm
        from .nnunet.inference import predict_nnunet

        if not input.exists():
            raise UserError("does not exist: give a scan or a folder of scans", input)
        info = predict_nnunet(paths, input, output, opts)
    else:
        info = predict(paths, input, output, opts)
    if "cases" in info:
        _ok(f"predicted {info['written']} case(s), {info['skipped']} already there -> {output}", cost=True)
    else:
        _ok(f"predicted {info['target']} ({info['mode']} mode, {info['voxels']} voxels, {info['volume_ml']:.1f} ml) -> {output}", cost=True)


@app.command("evaluate")
def evaluate_cmd(
    config: Path = typer.Option(..., "--config", help="YAML config merged over the built-in defaults."),
    target: str = typer.Option(..., "--target", help="Target name from the config."),
    variant: str = typer.Option("full", "--variant", help="Variant that was trained."),
    fold: int = typer.Option(0, "--fold", min=0, help="Cross-validation fold of the run."),
    run: List[Path] = typer.Option(..., "--run", help="The run folder of `train` (holds best.pt / last.pt); repeat it for an ensemble of folds (probabilities averaged; --split test only)."),
    out: Path = typer.Option(..., "--out", help="Output folder: metrics.csv and summary.json (created atomically)."),
    prepared: Optional[Path] = typer.Option(None, "--prepared", help="Prepared target folder (default: data.prepared/TARGET)."),
    split: Optional[str] = typer.Option(None, "--split", help="val or test (default: evaluate.split)."),
    modes: Optional[str] = typer.Option(None, "--modes", help="Comma-separated: auto,prompted (default: evaluate.modes)."),
    checkpoint: Optional[str] = typer.Option(None, "--checkpoint", help="best, last or a path (default: evaluate.checkpoint)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    base_weights: Optional[Path] = typer.Option(None, "--base-weights", help="SAM2 weights the model was trained on (default: model.checkpoint)."),
    max_cases: Optional[int] = typer.Option(None, "--max-cases", min=1, help="Score only the first N cases of the split."),
    prompt_counts: Optional[str] = typer.Option(None, "--prompt-counts", help="Comma-separated numbers of simulated prompts for prompted mode, e.g. 1,3 (default: evaluate.prompt_counts)."),
    studies: bool = typer.Option(True, "--studies/--no-studies", help="With one model: also the direction study (auto_forward, auto_backward: evaluate.directions) and the prompt-robustness modes (evaluate.robustness)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing OUT (only after the new one is complete)."),
) -> None:
    """Predict and score every validation (or test) case in auto and prompted mode, in 3D, in mm."""
    from .config import load_config
    from .evaluate.evaluation import EvalJob, evaluate_run

    if split not in (None, "val", "test"):
        raise UserError(f"--split must be val or test, got {split!r}")
    cfg = load_config(config)
    mode_list = [m.strip() for m in modes.split(",") if m.strip()] if modes else None
    counts = None
    if prompt_counts:
        try:
            counts = tuple(int(v) for v in prompt_counts.split(",") if v.strip())
        except ValueError:
            counts = ()
        if not counts or min(counts) < 1:
            raise UserError(f"--prompt-counts must be comma-separated whole numbers >= 1, got {prompt_counts!r}")
    job = EvalJob(target, variant, fold, tuple(run), out, prepared=prepared, split=split,
                  modes=tuple(mode_list) if mode_list else None, checkpoint=checkpoint, device=device,
                  base_weights=base_weights, max_cases=max_cases, overwrite=overwrite, prompt_counts=counts,
                  studies=studies)
    from .config import variant_config
    from .nnunet import is_nnunet_path

    nnunet = [is_nnunet_path(r) for r in run]
    arch_nnunet = variant_config(cfg, variant)["model"]["arch"] == "nnunet"
    if any(nnunet) or arch_nnunet:  # the nnU-Net reference arm
        if not all(nnunet):
            raise UserError(f"is not an nnU-Net run (no model.pt beside nnunet_run.json), but variant {variant!r} "
                            "or another --run is: an ensemble has one kind of model", run[nnunet.index(False)])
        if not arch_nnunet:
            raise UserError(f"is an nnU-Net run, but variant {variant!r} is not an nnU-Net variant "
                            "(model.arch: nnunet); pass --variant nnunet", run[0])
        from .nnunet.inference import evaluate_nnunet

        dest = evaluate_nnunet(cfg, job)
    else:
        dest = evaluate_run(cfg, job)
    what = f"fold {fold}" if len(run) == 1 else f"ensemble of {len(run)} runs"
    _ok(f"evaluated {target}/{variant}/{what} -> {dest}", cost=True)


@app.command("metrics")
def metrics_cmd(
    pred: Path = typer.Argument(..., help="Predicted mask (NIfTI); any value > 0 is foreground."),
    gt: Path = typer.Argument(..., help="Ground-truth mask (NIfTI) on the same grid; any value > 0 is foreground."),
    tolerance_mm: float = typer.Option(1.0, "--tolerance-mm", help="NSD tolerance in mm (>= 0)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Score PRED against GT in 3D, in mm: Dice, IoU, HD95, NSD, ASSD (MONAI-compatible, never NaN)."""
    import json
    import math

    from .evaluate.metrics import metrics_from_files

    if not (math.isfinite(tolerance_mm) and tolerance_mm >= 0):
        raise UserError(f"--tolerance-mm must be a finite number >= 0, got {tolerance_mm}")
    m = metrics_from_files(pred, gt, tolerance_mm)
    if as_json:
        typer.echo(json.dumps({"pred": str(pred), "gt": str(gt), "mode": "3d", **m}))
        return
    typer.echo(f"{'pred':<14}{pred}\n{'gt':<14}{gt}")
    typer.echo(f"{'spacing_mm':<14}{' x '.join(f'{s:.4g}' for s in m['spacing_mm'])}")
    typer.echo(f"{'tolerance_mm':<14}{m['tolerance_mm']:g}")
    for key in ("dice", "iou", "nsd"):
        typer.echo(f"{key:<14}{m[key]:.4f}")
    for key in ("hd95", "assd"):
        typer.echo(f"{key + '_mm':<14}{m[key]:.3f}")
    for key in ("pred_voxels", "gt_voxels"):
        typer.echo(f"{key:<14}{m[key]}")


@app.command("report")
def report_cmd(
    config: Path = typer.Option(..., "--config", help="YAML config merged over the built-in defaults."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default: results/reports, or results/demo/reports for synthetic data)."),
    targets: Optional[str] = typer.Option(None, "--targets", help="Comma-separated targets (default: run.targets; those without runs are skipped)."),
    runs: Optional[Path] = typer.Option(None, "--runs", help="Runs folder (default: results/runs, or results/demo/runs for synthetic data)."),
) -> None:
    """Write self-contained HTML pages (OUT/<target>.html, OUT/index.html) from the runs and their evaluations."""
    from .config import load_config
    from .report import build_report, default_out_dir

    cfg = load_config(config)
    names = [t.strip() for t in targets.split(",") if t.strip()] if targets else None
    dest = out or default_out_dir(cfg)
    pages = build_report(cfg, config, dest, names, runs)
    _ok(f"wrote {len(pages)} pages -> {dest}", cost=True)


@app.command("validate-config")
def validate_config_cmd(
    config: Path = typer.Argument(..., help="YAML config to check (merged over the built-in defaults)."),
) -> None:
    """Check a config file against the schema; print the merged result."""
    import yaml

    from .config import load_config

    cfg = load_config(config)
    typer.echo(yaml.safe_dump(cfg, sort_keys=False), nl=False)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    try:
        app(args=argv, prog_name="sam2-3dmed", standalone_mode=False)
    except UserError as exc:
        if debug:
            raise
        # plain write: one line, never wrapped, brackets in paths not taken as markup
        sys.stderr.write(f"error: {exc}\n")
        sys.exit(EXIT_USER_ERROR)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/yellow]")
        sys.exit(EXIT_INTERRUPTED)
    except typer.Exit as exc:  # --help, --version
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(EXIT_INTERRUPTED)
    except Exception as exc:
        # usage errors (missing argument, value out of range); typer bundles its own click,
        # so match its exception type by module rather than importing click
        if type(exc).__module__.endswith("click.exceptions") and hasattr(exc, "show"):
            exc.show()
            sys.exit(getattr(exc, "exit_code", 2))
        raise


if __name__ == "__main__":
    main()
