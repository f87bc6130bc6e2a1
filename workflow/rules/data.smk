# Data rules: get the raw MSD task (download or synthesise), then prepare each target.

wildcard_constraints:
    task="Task0[0-9]_[A-Za-z]+",
    target="[a-z][a-z0-9_]*",


if CFG["data"]["source"] == "msd":

    localrules:
        fetch_msd,  # downloads run on the submit host: compute nodes often have no internet

    rule fetch_msd:
        output:
            directory(f"{RAW}/{{task}}"),
        conda:
            CONDA_ENV
        log:
            f"{LOGS}/fetch_msd/{{task}}.log",
        benchmark:
            f"{LOGS}/fetch_msd/{{task}}.bench.tsv"
        params:
            out=lambda wc, output: str(Path(output[0]).parent),
        resources:
            cpus_per_task=1,
            runtime=240,
            mem_mb=4000,
        shell:
            "sam2-3dmed fetch-msd {wildcards.task:q} --out {params.out:q} > {log:q} 2>&1"

else:

    rule synth:
        output:
            directory(f"{RAW}/{{task}}"),
        conda:
            CONDA_ENV
        log:
            f"{LOGS}/synth/{{task}}.log",
        benchmark:
            f"{LOGS}/synth/{{task}}.bench.tsv"
        params:
            out=lambda wc, output: str(Path(output[0]).parent),
            cases=CFG["data"]["synthetic"]["cases"],
            test_cases=CFG["data"]["synthetic"]["test_cases"],
            seed=CFG["data"]["synthetic"]["seed"],
            size=CFG["data"]["synthetic"]["size"],
            profile=CFG["data"]["synthetic"]["profile"],
        # memory: measured peak 1.9 GB (Snakemake's sampling) for 512 x 512 x 751 phantoms
        resources:
            cpus_per_task=1,
            runtime=30,
            mem_mb=4000,
        shell:
            "sam2-3dmed synth {wildcards.task:q} --out {params.out:q} --cases {params.cases}"
            " --test-cases {params.test_cases} --seed {params.seed} --size {params.size} --profile {params.profile:q}"
            " > {log:q} 2>&1"


rule prepare:
    input:
        task_dir=lambda wc: f"{RAW}/{TASK_OF[wc.target]}",
    output:
        directory(f"{PREPARED}/{{target}}"),
    conda:
        CONDA_ENV
    log:
        f"{LOGS}/prepare/{{target}}.log",
    benchmark:
        f"{LOGS}/prepare/{{target}}.bench.tsv"
    params:
        config=merged_config,
        out=lambda wc: f"{PREPARED}/{wc.target}",
        settings=lambda wc: settings(target=target_config(CFG, wc.target), prepare=CFG["prepare"], splits=CFG["splits"]),
    # memory: measured peak 2.1 GB for a 512 x 512 x 751 task (benchmarks/RESULTS.md,
    # Scale); the margin covers finer in-plane spacings (0.98 mm -> 0.8 mm: 1.5x the voxels)
    resources:
        cpus_per_task=1,
        runtime=120,
        mem_mb=6000,
    shell:
        "sam2-3dmed prepare {input.task_dir:q} --target {wildcards.target:q} --out {params.out:q}"
        " --config {params.config:q} > {log:q} 2>&1"
