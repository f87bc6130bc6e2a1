# Evaluation: one job per target x variant x fold, on the split named in evaluate.split
# (the fold's validation cases by default), in every mode of evaluate.modes. Writes
# metrics.csv and summary.json into the eval folder (atomically: all or nothing).

EVAL_SPLIT = CFG["evaluate"]["split"]


rule evaluate:
    input:
        summary=f"{RUNS}/{{target}}/{{variant}}/fold{{fold}}/train_summary.json",
        prepared=f"{PREPARED}/{{target}}",
        config=CONFIG_FILE,
        weights=_weights,
    output:
        directory(f"{RUNS}/{{target}}/{{variant}}/fold{{fold}}/eval/{EVAL_SPLIT}"),
    log:
        f"{LOGS}/evaluate/{{target}}_{{variant}}_fold{{fold}}.log",
    benchmark:
        f"{LOGS}/evaluate/{{target}}_{{variant}}_fold{{fold}}.bench.tsv"
    params:
        run=lambda wc: f"{RUNS}/{wc.target}/{wc.variant}/fold{wc.fold}",
    resources:
        runtime=240,
        mem_mb=16000,
    shell:
        "sam2-3dmed evaluate --config {input.config:q} --target {wildcards.target:q} --variant {wildcards.variant:q}"
        " --fold {wildcards.fold} --run {params.run:q} --prepared {input.prepared:q} --out {output:q}"
        " --overwrite > {log:q} 2>&1"
