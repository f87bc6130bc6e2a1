# Training curves for `dvc plots show` / `dvc plots diff`: each run's train_log.csv and
# val_log.csv copied, once its training has finished, into PLOTS/train/ and PLOTS/val/
# as <target>/<variant>/fold<k>.csv (dvc.yaml's top-level `plots` declares the two
# folders: loss and validation Dice against step). Numbers only, a file per run, so
# DVC can compare revisions; the run folders themselves hold checkpoints and images.

PLOTS = f"{RESULTS}/plots"


localrules:
    curves,


rule curves:
    input:
        summary=f"{RUNS}/{{target}}/{{variant}}/fold{{fold}}/train_summary.json",
    output:
        train=f"{PLOTS}/train/{{target}}/{{variant}}/fold{{fold}}.csv",
        val=f"{PLOTS}/val/{{target}}/{{variant}}/fold{{fold}}.csv",
    conda:
        CONDA_ENV
    log:
        f"{LOGS}/curves/{{target}}/{{variant}}/fold{{fold}}.log",
    params:
        run=lambda wc: f"{RUNS}/{wc.target}/{wc.variant}/fold{wc.fold}",
    resources:
        cpus_per_task=1,
        runtime=5,
        mem_mb=500,
    shell:
        "(cp {params.run:q}/train_log.csv {output.train:q} && cp {params.run:q}/val_log.csv {output.val:q}) > {log:q} 2>&1"
