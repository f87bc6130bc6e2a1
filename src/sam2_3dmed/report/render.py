"""Assemble and write the report pages (jinja2 templates in ``report/templates``).

Each page is written with :func:`~sam2_3dmed.atomic.atomic_file` (a temp file beside
it, then a rename), so a reader never sees half a page and a failed run leaves the
previous pages as they were.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import jinja2

from ..atomic import atomic_file
from ..config import results_root
from ..console import log
from ..errors import UserError
from . import boundary, figures, heads, studies, tables, viewer
from .collect import METRICS, TargetResults, collect_target, fingerprint
from .provenance import provenance

ARXIV = "arXiv 2510.08967"


def default_runs_dir(cfg: dict) -> Path:
    return results_root(cfg) / "runs"


def default_out_dir(cfg: dict) -> Path:
    return results_root(cfg) / "reports"


def _env() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("sam2_3dmed.report", "templates"),
                             autoescape=True, trim_blocks=True, lstrip_blocks=True,
                             undefined=jinja2.StrictUndefined)
    return env


# ---------------------------------------------------------------- per-target helpers
def _model_setting(cfg: dict, variant: str, key: str):
    over = (cfg.get("variants", {}).get(variant) or {}).get("model", {}) or {}
    return over.get(key, cfg["model"].get(key))


def _pretrained_by_variant(cfg: dict, res: TargetResults) -> dict[str, bool | None]:
    out = {}
    for v in res.variants:
        vals = {bool(s["pretrained"]) for r in res.runs_of(v) for s in (r.train_summary, r.eval_summary)
                if s and "pretrained" in s}
        if len(vals) == 1:
            out[v] = vals.pop()
        elif vals:
            out[v] = None  # mixed
        else:
            setting = _model_setting(cfg, v, "pretrained") if v in cfg.get("variants", {}) else None
            out[v] = None if setting is None else bool(setting)
    return out


_fingerprint = fingerprint


_READ_ERRORS = (OSError, EOFError, ValueError, zlib.error, gzip.BadGzipFile, figures.GridMismatch)


def _qualitative(cfg: dict, res: TargetResults, tcfg: dict) -> dict:
    """Best/median/worst case by Dice per variant (first mode, usually auto), or why not."""
    import nibabel as nib

    read_errors = (*_READ_ERRORS, nib.filebasedimages.ImageFileError)
    fp, fp_path, note = _fingerprint(cfg, res.target)
    out = {"note": note, "variants": []}
    if res.metrics.empty:
        return out
    cases = {c["case_id"]: c for c in (fp or {}).get("cases", [])}
    task_dir = Path(fp["task_dir"]) if fp else None
    cache: dict[str, tuple] = {}

    def originals(case_id):
        if case_id not in cache:
            if len(cache) >= 3:
                cache.pop(next(iter(cache)))
            rec = cases[case_id]
            cache[case_id] = (figures.load_canonical(task_dir / rec["image"]),
                              figures.load_canonical(task_dir / rec["label"]))
        return cache[case_id]

    for variant in res.variants:
        sub = res.metrics[res.metrics["variant"] == variant]
        modes = [m for m in res.modes if m in set(sub["mode"])]
        if not modes:
            continue
        mode = modes[0]
        entry = {"variant": variant, "mode": mode, "message": None, "cases": []}
        out["variants"].append(entry)
        picks = tables.best_median_worst(res.metrics, variant, mode)
        pred_dirs = {r.fold: r.predictions_dir for r in res.runs_of(variant)}
        if not any(d.is_dir() for d in pred_dirs.values()):
            shown = ", ".join(str(d) for d in pred_dirs.values())
            entry["message"] = (f"predictions were not saved (no {shown}; evaluate.save_predictions is false?): "
                                "no qualitative figures for this variant")
            continue
        if fp is None:
            entry["message"] = note
            continue
        for label, row in picks:
            cid, fold = str(row["case_id"]), int(row["fold"])
            case = {"label": label, "case_id": cid, "fold": fold, "dice": tables.fmt(float(row["dice"]), 3),
                    "uri": None, "message": None}
            entry["cases"].append(case)
            pred_path = pred_dirs[fold] / f"{cid}_{mode}.nii.gz"
            if cid not in cases:
                case["message"] = f"{fp_path} does not list case {cid}"
                continue
            if not pred_path.is_file():
                case["message"] = f"prediction not saved ({pred_path} is missing)"
                continue
            try:
                image, lab = originals(cid)
                cv = figures.case_volumes(image, lab, figures.load_canonical(pred_path), tcfg["labels"])
                title = f"{variant} / {mode}: {label} case {cid} (fold {fold}), Dice {case['dice']}"
                case["uri"] = figures.case_figure(cv, tcfg["hu_window"], title)
            except read_errors as exc:
                case["message"] = f"could not draw ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
    return out


def _curves(res: TargetResults) -> list[dict]:
    out = []
    for r in res.runs:
        uri = figures.training_figure(r.train_log, r.val_log, f"{res.target} {r.variant} fold {r.fold}")
        out.append({"name": r.name, "uri": uri,
                    "message": None if uri else "no train_log.csv or val_log.csv in " + str(r.path)})
    return out


def _devices(res: TargetResults) -> list[str]:
    devs = set()
    for r in res.runs:
        for s in (r.train_summary, r.eval_summary):
            if s and s.get("device"):
                devs.add(str(s["device"]))
    for e in res.ensembles:
        if e.summary and e.summary.get("device"):
            devs.add(str(e.summary["device"]))
    if "device" in res.metrics.columns:
        devs |= {str(d) for d in res.metrics["device"] if str(d)}
    return sorted(devs)


def target_context(cfg: dict, res: TargetResults, prov: dict) -> dict:
    tcfg = cfg["targets"][res.target]
    tol = next((s["nsd_tolerance_mm"] for r in res.runs for s in [r.eval_summary] if s and "nsd_tolerance_mm" in s),
               tcfg["nsd_tolerance_mm"])
    labels = {m: tables.metric_label(m, tol) for m in METRICS}
    fp, _, _ = _fingerprint(cfg, res.target)
    synthetic = (cfg["data"]["source"] == "synthetic" or bool(fp and fp.get("synthetic"))
                 or any(bool(r.eval_summary.get("synthetic")) for r in res.runs if r.eval_summary)
                 or any(bool(e.summary.get("synthetic")) for e in res.ensembles if e.summary))
    pretrained = _pretrained_by_variant(cfg, res)
    head = tables.headline(res)
    ref_rows, ref_meta = tables.reference_rows(res.target)
    title = (f"{res.target} \u2014 SYNTHETIC phantoms, not MSD data" if synthetic
             else f"{res.target} \u2014 MSD {tcfg['task']}")
    log.info("report %s: %d run(s), %d case row(s), variants %s", res.target, len(res.runs), len(res.metrics),
             ", ".join(res.variants))
    return {
        "target": res.target,
        "title": title,
        "task": tcfg["task"],
        "synthetic": synthetic,
        "random_init": [v for v, p in pretrained.items() if p is False],
        "pretrained": pretrained,
        "split": res.split,
        "runs_dir": str(res.runs_dir / res.target),
        "runs": [{"name": r.name, "path": str(r.path), "evaluated": r.metrics is not None,
                  "n_rows": 0 if r.metrics is None else len(r.metrics),
                  "checkpoint_step": (r.eval_summary or {}).get("checkpoint_step", "n/a"),
                  "steps": (r.train_summary or {}).get("steps", "n/a")} for r in res.runs],
        "notes": res.notes,
        "metrics": list(METRICS),
        "metric_labels": labels,
        "tolerance": tol,
        "modes": res.modes,
        "variants": res.variants,
        "headline": head,
        "variant_notes": tables.variant_notes(res),
        "reference_rows": ref_rows,
        "reference": ref_meta,
        "ablation": tables.ablation(res, head),
        "ensemble": tables.ensemble(res),
        "prompts": tables.prompt_counts(res),
        "distribution": figures.distribution_figure(res.metrics, res.variants, res.modes, labels)
        if not res.metrics.empty else None,
        "cases": tables.case_table(res),
        "curves": _curves(res),
        "qualitative": _qualitative(cfg, res, tcfg),
        "viewer": viewer.context(cfg, res, tcfg),
        "robustness": studies.robustness(res, labels),
        "directions": studies.directions(res, labels),
        "boundary": boundary.context(res),
        "heads": heads.context(res, float(cfg["report"]["gate_open_ratio"])),
        "cost": tables.cost(res),
        "devices": _devices(res),
        "hu_window": tcfg["hu_window"],
        "prov": prov,
    }


def _index_row(ctx: dict) -> dict:
    full = [r for r in ctx["headline"] if r["variant"] == "full"]
    modes = []
    for r in full:
        c = {x["metric"]: x for x in r["cells"]}
        modes.append({"mode": r["mode"], "n_folds": r["n_folds"], "n_cases": r["n_cases"],
                      **{m: c[m]["text"] for m in METRICS}})
    ensemble = []  # the full variant's ensemble on the held-out test split, apart from the per-fold rows
    for e in ctx["ensemble"]:
        if e["variant"] != "full":
            continue
        for r in e["rows"]:
            c = {x["metric"]: x for x in r["cells"]}
            ensemble.append({"mode": r["mode"], "what": e["what"], "split": e["split"], "n_cases": r["n_cases"],
                             **{m: c[m]["text"] for m in METRICS}})
    return {"target": ctx["target"], "title": ctx["title"], "href": f"{ctx['target']}.html", "ensemble": ensemble,
            "synthetic": ctx["synthetic"], "random_init": ctx["random_init"], "modes": modes,
            "variants": ctx["variants"], "devices": ctx["devices"], "n_runs": len(ctx["runs"]),
            "pretrained": ctx["pretrained"], "tolerance": ctx["tolerance"], "variant_notes": ctx["variant_notes"]}


def _write(path: Path, text: str) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # mkstemp makes 0600; a page should be readable like any file


# ---------------------------------------------------------------- entry point
def build_report(cfg: dict, config_path: Path | None = None, out: Path | None = None,
                 targets: list[str] | None = None, runs_dir: Path | None = None, cwd: Path | None = None) -> list[Path]:
    """Write ``OUT/<target>.html`` for each target with run folders, then ``OUT/index.html``."""
    runs_dir = Path(runs_dir) if runs_dir else default_runs_dir(cfg)
    out = Path(out) if out else default_out_dir(cfg)
    explicit = targets is not None
    targets = list(targets) if explicit else list(cfg["run"]["targets"])
    unknown = [t for t in targets if t not in cfg["targets"]]
    if unknown:
        raise UserError(f"unknown target {unknown[0]!r}; defined targets: {', '.join(sorted(cfg['targets']))}")
    if not targets:
        raise UserError("no targets to report (run.targets is empty and --targets was not given)")
    split = cfg["evaluate"]["split"]
    results = []
    for t in targets:
        res = collect_target(runs_dir, t, split, cfg["run"]["variants"])
        if res is None:
            if explicit:
                raise UserError(f"no run folders found for target {t!r} (searched <variant>/fold<k>/ here)",
                                runs_dir / t)
            log.warning("no run folders for %s under %s: skipped", t, runs_dir / t)
            continue
        results.append(res)
    if not results:
        raise UserError(f"no run folders found for any of {', '.join(targets)} (searched <target>/<variant>/fold<k>/ here)",
                        runs_dir)

    prov = provenance(cfg, config_path, cwd)
    env = _env()
    written, index_rows = [], []
    for res in results:
        ctx = target_context(cfg, res, prov)
        page = out / f"{res.target}.html"
        _write(page, env.get_template("target.html.j2").render(**ctx))
        log.info("wrote %s (%.0f kB)", page, page.stat().st_size / 1024)
        written.append(page)
        index_rows.append(_index_row(ctx))
    done = {p.name for p in written}
    others = sorted(p.name for p in out.glob("*.html") if p.name not in done and p.name != "index.html")
    any_synth = any(r["synthetic"] for r in index_rows)
    random_init = sorted({v for r in index_rows for v in r["random_init"]})
    notes = {v: n for r in index_rows for v, n in r["variant_notes"].items() if n["reduced"]}
    weights: dict[str, set] = {}
    for r in index_rows:
        for v, p in r["pretrained"].items():
            weights.setdefault(v, set()).add(p)
    names = {True: "SAM2.1 pretrained", False: "random init", None: "unknown"}
    weights_text = "; ".join(f"{v}: {' / '.join(names[p] for p in sorted(ps, key=str))}" for v, ps in weights.items())
    devices = sorted({d for r in index_rows for d in r["devices"]})
    index = out / "index.html"
    _write(index, env.get_template("index.html.j2").render(
        rows=index_rows, others=others, prov=prov, synthetic=any_synth, random_init=random_init, variant_notes=notes,
        devices=devices, weights=weights_text, metrics=list(METRICS), metric_labels={m: tables.metric_label(m) for m in METRICS},
        title=("SAM2-3dMed reports \u2014 SYNTHETIC phantoms, not MSD data" if any_synth
               else "SAM2-3dMed reports \u2014 MSD"),
        split=split))
    written.append(index)
    return written


__all__ = ["build_report", "default_out_dir", "default_runs_dir", "results_root"]
