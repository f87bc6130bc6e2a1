# Helpers shared by the rules (kept apart from the rules, as `snakemake --lint` asks).

import shlex


def settings(**parts):
    """The config sections a job depends on, as one canonical string. Jobs carry it as a
    param: Snakemake re-runs a job when its params change (rerun trigger "params"), so
    editing one target's or variant's settings re-runs only the jobs that read them. The
    config file itself is not an input (its mtime would re-run everything)."""
    return json.dumps(parts, sort_keys=True)


def _weights(wc):
    """The SAM2.1 checkpoint a variant needs (none for random-init variants)."""
    m = variant_config(CFG, wc.variant)["model"]
    return [m["checkpoint"]] if m["pretrained"] else []


def merged_config(wc, output):
    """The merged config file every job's command reads (CONFIG_PATH). A param function
    that takes ``output`` counts as derived from the outputs, so Snakemake does not record
    it as a rerun trigger: the file's name changes with any edit of the config, while what
    a job depends on is in its ``settings`` param."""
    return CONFIG_PATH


def device(wc, output):
    """The train/evaluate jobs' --device (run.device). Derived from the outputs, like
    merged_config, so that moving a run from CPU to GPU does not re-run finished jobs."""
    return CFG["run"]["device"]


def fold_runs(wc):
    """Every fold's run folder of a target x variant (run.folds, in order): the members of
    its ensemble."""
    return [f"{RUNS}/{wc.target}/{wc.variant}/fold{k}" for k in FOLDS]


def fold_summaries(wc):
    """Every fold's train_summary.json (the training rule's output) of a target x variant."""
    return [f"{run}/train_summary.json" for run in fold_runs(wc)]


def fold_checkpoints(wc):
    """Every fold's checkpoint file, the one evaluate.checkpoint names (best.pt or last.pt,
    as `evaluate` picks it in a run folder)."""
    return [f"{run}/{CFG['evaluate']['checkpoint']}.pt" for run in fold_runs(wc)]


def run_options(wc):
    """`--run DIR` once per fold, each folder quoted for the shell (the evaluate_ensemble
    command line takes it as it is, so nothing unquoted reaches the shell). Depends on the
    wildcards only: a changed run.folds is a changed param and re-runs the job."""
    return " ".join(f"--run {shlex.quote(run)}" for run in fold_runs(wc))


def model_options(wc):
    """`--model CKPT` for every fold after the first (whose checkpoint is predict's MODEL),
    each quoted for the shell. A param of the wildcards only, so a changed run.folds or
    evaluate.checkpoint re-runs the job."""
    return " ".join(f"--model {shlex.quote(ckpt)}" for ckpt in fold_checkpoints(wc)[1:])
