# Evaluation: one job per target x variant x fold, on the split named in evaluate.split
# (the fold's validation cases by default), in every mode of evaluate.modes. Writes
# metrics.csv and summary.json into the eval folder (atomically: all or nothing).

EVAL_SPLIT = CFG["evaluate"]["split"]


rule evaluate:
    input:
        summary=f"{RUNS}/{{target}}/{{variant}}/fold{{fold}}/train_summary.json",
        prepared=f"{PREPARED}/{{target}}",
        weights=_weights,
    output:
        folder=directory(f"{RUNS}/{{target}}/{{variant}}/fold{{fold}}/eval/{EVAL_SPLIT}"),
        # a copy of metrics.json (summary.json's numbers) outside the run folders, for `dvc metrics show`
        metrics=f"{METRICS}/{{target}}/{{variant}}/fold{{fold}}_{EVAL_SPLIT}.json",
    conda:
        CONDA_ENV
    log:
        f"{LOGS}/evaluate/{{target}}_{{variant}}_fold{{fold}}.log",
    benchmark:
        f"{LOGS}/evaluate/{{target}}_{{variant}}_fold{{fold}}.bench.tsv"
    params:
        config=merged_config,
        device=device,
        run=lambda wc: f"{RUNS}/{wc.target}/{wc.variant}/fold{wc.fold}",
        settings=eval_settings,
    # requests here, not in a profile (see the train rule)
    resources:
        gpu=1,
        cpus_per_task=4,
        runtime=240,
        # measured peak 2.5 GB for a 512 x 512 x 225 case (feature cache 2.5 MB per slice);
        # the longest MSD case (751 slices) needs about 3x that
        mem_mb=16000,
    threads: 4
    shell:
        "sam2-3dmed evaluate --config {params.config:q} --target {wildcards.target:q} --variant {wildcards.variant:q}"
        " --fold {wildcards.fold} --run {params.run:q} --prepared {input.prepared:q} --out {output.folder:q}"
        " --device {params.device:q}"
        " --overwrite > {log:q} 2>&1 && cp {output.folder:q}/metrics.json {output.metrics:q}"


# The ensemble: one job per target x variant, every fold's model of run.folds together
# (foreground probabilities averaged, as nnU-Net ensembles its folds) on the held-out test
# split, which no fold trained or validated on; the only split an ensemble may be scored
# on (each fold's validation cases are the other folds' training cases). In rule all when
# there is a test split (splits.test_fraction > 0). Same outputs as evaluate, with
# summary.json's "ensemble" block naming the folds and checkpoints behind the numbers.

ENSEMBLE = CFG["splits"]["test_fraction"] > 0


rule evaluate_ensemble:
    input:
        summaries=fold_summaries,
        prepared=f"{PREPARED}/{{target}}",
        weights=_weights,
    output:
        folder=directory(f"{RUNS}/{{target}}/{{variant}}/ensemble/eval/test"),
        # a copy of metrics.json (summary.json's numbers) outside the run folders, for `dvc metrics show`
        metrics=f"{METRICS}/{{target}}/{{variant}}/ensemble_test.json",
    conda:
        CONDA_ENV
    log:
        f"{LOGS}/evaluate_ensemble/{{target}}_{{variant}}.log",
    benchmark:
        f"{LOGS}/evaluate_ensemble/{{target}}_{{variant}}.bench.tsv"
    params:
        config=merged_config,
        device=device,
        fold=FOLDS[0],  # --fold names the splits.json entry; the test split is the same in every fold
        runs=run_options,  # --run DIR per fold, already quoted
        # evaluate.split is not read (the split is always test): editing it re-runs the folds' jobs only
        settings=lambda wc: eval_settings(wc, {k: v for k, v in CFG["evaluate"].items() if k != "split"}),
    # requests here, not in a profile (see the train rule); memory as evaluate (the members'
    # weights are small beside the feature cache); wall time: every case is encoded and
    # propagated once per member, so K folds cost about K single-model evaluations
    resources:
        gpu=1,
        cpus_per_task=4,
        runtime=720,
        mem_mb=16000,
    threads: 4
    shell:
        "sam2-3dmed evaluate --config {params.config:q} --target {wildcards.target:q} --variant {wildcards.variant:q}"
        " --fold {params.fold} {params.runs} --split test --prepared {input.prepared:q} --out {output.folder:q}"
        " --device {params.device:q}"
        " --overwrite > {log:q} 2>&1 && cp {output.folder:q}/metrics.json {output.metrics:q}"
