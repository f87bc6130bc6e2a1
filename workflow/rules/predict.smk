# Prediction of the task's unlabelled test images (MSD imagesTs): one job per target x
# variant, every fold's model of run.folds as one ensemble (`sam2-3dmed predict`: the
# first fold's checkpoint is MODEL, each other fold's is a --model; probabilities are
# averaged), in auto mode. Writes <case>.nii.gz per image, on each image's own grid.
# Checkpoints: the ones evaluate.checkpoint names (best.pt or last.pt). In rule all when
# the raw task has test images (every MSD task; synthetic ones with data.synthetic.test_cases > 0).

TEST_IMAGES = CFG["data"]["source"] == "msd" or CFG["data"]["synthetic"]["test_cases"] > 0


rule predict_test_images:
    input:
        summaries=fold_summaries,  # the checkpoints themselves are not outputs (see the train rule)
        task_dir=lambda wc: f"{RAW}/{TASK_OF[wc.target]}",  # as prepare: the raw task folder
        weights=_weights,  # a frozen pretrained encoder is loaded from the SAM2.1 weights it was trained on
    output:
        directory(f"{RUNS}/{{target}}/{{variant}}/ensemble/imagesTs"),
    conda:
        CONDA_ENV
    log:
        f"{LOGS}/predict_test_images/{{target}}_{{variant}}.log",
    benchmark:
        f"{LOGS}/predict_test_images/{{target}}_{{variant}}.bench.tsv"
    params:
        device=device,
        images=lambda wc, input: f"{input.task_dir}/imagesTs",
        model=predict_model,
        more_models=predict_more_models,  # --model CKPT (nnU-Net: run folder) per further fold, already quoted
    # requests here, not in a profile (see the train rule); memory as evaluate; wall time: a
    # whole scan per image and member (Pancreas has 139 test images)
    resources:
        gpu=1,
        cpus_per_task=4,
        runtime=720,
        mem_mb=16000,
    threads: 4
    shell:
        "sam2-3dmed predict {params.model:q} {params.images:q} {output:q} {params.more_models}"
        " --device {params.device:q} --overwrite > {log:q} 2>&1"
