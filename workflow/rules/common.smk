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


# nnunet.* keys that planning depends on (the others are training's and prediction's)
NNUNET_PLAN_KEYS = ("configuration", "planner", "plans", "planning_processes")


def is_nnunet(variant):
    """Whether a variant is the nnU-Net reference arm (model.arch: nnunet)."""
    return variant_config(CFG, variant)["model"]["arch"] == "nnunet"


def _nnunet_plan(wc):
    """The target's nnU-Net plan (rule nnunet_plan) for an nnU-Net variant; nothing otherwise."""
    return [f"{NNUNET_BASE}/{wc.target}"] if is_nnunet(wc.variant) else []


def train_settings(wc):
    """The train job's settings param; an nnU-Net variant's includes nnunet.* (the others'
    string is unchanged, so their finished runs are not re-run)."""
    v = variant_config(CFG, wc.variant)
    parts = dict(target=target_config(CFG, wc.target), model=v["model"], train=v["train"])
    if is_nnunet(wc.variant):
        parts["nnunet"] = CFG["nnunet"]
    return settings(**parts)


def eval_settings(wc, evaluate=None):
    """The evaluate jobs' settings param (nnunet.* added for an nnU-Net variant only)."""
    parts = dict(target=target_config(CFG, wc.target), infer=CFG["infer"],
                 evaluate=CFG["evaluate"] if evaluate is None else evaluate)
    if is_nnunet(wc.variant):
        parts["nnunet"] = CFG["nnunet"]
    return settings(**parts)


def predict_model(wc):
    """predict_test_images' MODEL: the first fold's checkpoint (an nnU-Net variant: its run folder)."""
    return fold_runs(wc)[0] if is_nnunet(wc.variant) else fold_checkpoints(wc)[0]


def predict_more_models(wc):
    """`--model` for every fold after the first (its checkpoint, or an nnU-Net variant's run
    folder), each quoted for the shell. A param of the wildcards only, so a changed
    run.folds or evaluate.checkpoint re-runs the job."""
    more = fold_runs(wc)[1:] if is_nnunet(wc.variant) else fold_checkpoints(wc)[1:]
    return " ".join(f"--model {shlex.quote(m)}" for m in more)
