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
        # a copy of summary.json outside the run folders, for `dvc metrics show`
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
        settings=lambda wc: settings(target=target_config(CFG, wc.target), infer=CFG["infer"],
                                     evaluate=CFG["evaluate"]),
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
        " --overwrite > {log:q} 2>&1 && cp {output.folder:q}/summary.json {output.metrics:q}"
