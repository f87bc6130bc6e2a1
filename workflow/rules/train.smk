# Training: one job per target x variant x fold. Only train_summary.json is declared as
# output, so a restarted job (crash, kill, SLURM requeue) finds the run folder's last.pt
# and resumes instead of starting over. When the job re-runs because its settings or
# prepared data changed, the checkpoint's run key no longer matches and the stale run is
# moved to superseded/ (--restart-if-changed) before training starts over.




localrules:
    fetch_weights,  # downloads run on the submit host: compute nodes often have no internet


rule fetch_weights:
    output:
        "results/weights/{name}.pt",
    conda:
        CONDA_ENV
    log:
        f"{LOGS}/fetch_weights/{{name}}.log",
    benchmark:
        f"{LOGS}/fetch_weights/{{name}}.bench.tsv"
    resources:
        cpus_per_task=1,
        runtime=60,
        mem_mb=4000,
    shell:
        "sam2-3dmed fetch-weights {wildcards.name:q} --out results/weights > {log:q} 2>&1"


rule train:
    input:
        prepared=f"{PREPARED}/{{target}}",
        weights=_weights,
        nnunet=_nnunet_plan,  # an nnU-Net variant: its target's plan (rule nnunet_plan)
    output:
        summary=f"{RUNS}/{{target}}/{{variant}}/fold{{fold}}/train_summary.json",
    conda:
        CONDA_ENV
    log:
        f"{LOGS}/train/{{target}}_{{variant}}_fold{{fold}}.log",
    benchmark:
        f"{LOGS}/train/{{target}}_{{variant}}_fold{{fold}}.bench.tsv"
    params:
        config=merged_config,
        device=device,
        out=lambda wc: f"{RUNS}/{wc.target}/{wc.variant}/fold{wc.fold}",
        settings=train_settings,
    # Requests live here, not in a profile's set-resources: `--set-resources train:runtime=2880`
    # then changes the wall time only (a profile's set-resources block is replaced whole by
    # the command line's, which dropped the GPU). gpu=1 -> sbatch --gpus=1; locally it
    # limits nothing unless --resources gpu=N is given.
    resources:
        gpu=1,
        cpus_per_task=8,
        # nnU-Net: "all network trainings take less than 2 days" on an RTX 2080 Ti (its docs)
        runtime=lambda wc: 2880 if is_nnunet(wc.variant) else 1440,
        # measured peak at 512 px, Hiera-small, clips of 12: 10.0 GB on CPUs (activations in
        # host memory; on a GPU node the host needs less), plus the loader workers' share.
        # nnU-Net: its data augmentation workers (nnUNet_n_proc_DA) hold batches in host memory
        mem_mb=lambda wc: 32000 if is_nnunet(wc.variant) else 16000,
    # torch's CPU threads (Snakemake exports OMP_NUM_THREADS = threads; capped by --cores
    # locally and by --max-threads, SNAKEMAKE_MAX_THREADS in scripts/workflow.sh)
    threads: 8
    shell:
        # appended, with a header per attempt: a resumed (requeued, retried) job keeps the earlier log
        "echo \"== $(date -Is) on $(hostname), SLURM job ${{SLURM_JOB_ID:-none}}\" >> {log:q}; "
        "sam2-3dmed train --config {params.config:q} --target {wildcards.target:q} --variant {wildcards.variant:q}"
        " --fold {wildcards.fold} --prepared {input.prepared:q} --out {params.out:q} --device {params.device:q}"
        " --restart-if-changed >> {log:q} 2>&1"
