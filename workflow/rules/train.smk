# Training: one job per target x variant x fold. Only train_summary.json is declared as
# output, so a restarted job (crash, kill, SLURM requeue) finds the run folder's last.pt
# and resumes instead of starting over.


def _weights(wc):
    """The SAM2.1 checkpoint a variant needs (none for random-init variants)."""
    m = variant_config(CFG, wc.variant)["model"]
    return [m["checkpoint"]] if m["pretrained"] else []


rule fetch_weights:
    output:
        "results/weights/{name}.pt",
    log:
        f"{LOGS}/fetch_weights/{{name}}.log",
    benchmark:
        f"{LOGS}/fetch_weights/{{name}}.bench.tsv"
    resources:
        runtime=60,
        mem_mb=4000,
    shell:
        "sam2-3dmed fetch-weights {wildcards.name:q} --out results/weights > {log:q} 2>&1"


rule train:
    input:
        prepared=f"{PREPARED}/{{target}}",
        config=CONFIG_FILE,
        weights=_weights,
    output:
        summary=f"{RUNS}/{{target}}/{{variant}}/fold{{fold}}/train_summary.json",
    log:
        f"{LOGS}/train/{{target}}_{{variant}}_fold{{fold}}.log",
    benchmark:
        f"{LOGS}/train/{{target}}_{{variant}}_fold{{fold}}.bench.tsv"
    params:
        out=lambda wc: f"{RUNS}/{wc.target}/{wc.variant}/fold{wc.fold}",
    resources:
        runtime=1440,
        mem_mb=32000,
    shell:
        "sam2-3dmed train --config {input.config:q} --target {wildcards.target:q} --variant {wildcards.variant:q}"
        " --fold {wildcards.fold} --prepared {input.prepared:q} --out {params.out:q} > {log:q} 2>&1"
