# The nnU-Net v2 reference arm: variants with model.arch: nnunet (variants.nnunet). Same
# cases, folds and metrics as every other variant; nnU-Net's own planning, trainer and
# predictor in between (src/sam2_3dmed/nnunet/). One planning job per target (CPU only:
# nnU-Net's fingerprint, plans and preprocessing); training and evaluation are the train,
# evaluate, evaluate_ensemble and predict_test_images rules, whose commands hand an nnU-Net
# variant to nnU-Net (GPU jobs, like the others). nnUNet_raw / nnUNet_preprocessed are
# NNUNET_BASE/<target>/{raw,preprocessed}; nnUNet_results is each fold's run folder.

NNUNET_BASE = str(nnunet_base(CFG))


rule nnunet_plan:
    input:
        prepared=f"{PREPARED}/{{target}}",
    output:
        directory(f"{NNUNET_BASE}/{{target}}"),
    conda:
        CONDA_ENV
    log:
        f"{LOGS}/nnunet_plan/{{target}}.log",
    benchmark:
        f"{LOGS}/nnunet_plan/{{target}}.bench.tsv"
    params:
        config=merged_config,
        settings=lambda wc: settings(target=target_config(CFG, wc.target), splits=CFG["splits"],
                                     nnunet={k: CFG["nnunet"][k] for k in NNUNET_PLAN_KEYS}),
    # no GPU: nnU-Net's planning and preprocessing run on CPUs. Memory: each of the
    # nnunet.planning_processes workers holds a resampled case (float32; a 512 x 512 x 750
    # scan is 0.8 GB before resampling, more at a finer target spacing)
    resources:
        cpus_per_task=8,
        runtime=480,
        mem_mb=32000,
    threads: 8
    shell:
        "sam2-3dmed nnunet-plan --config {params.config:q} --target {wildcards.target:q} --prepared {input.prepared:q}"
        " --out {output:q} --overwrite > {log:q} 2>&1"
