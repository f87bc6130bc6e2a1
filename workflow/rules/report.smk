# Reports: one call renders every target's page and the index from all runs and their
# evaluations, per fold and of the folds' ensemble (self-contained HTML, figures embedded).

REPORTS = f"{RESULTS}/reports"


rule report:
    input:
        evals=expand(f"{RUNS}/{{target}}/{{variant}}/fold{{fold}}/eval/{EVAL_SPLIT}",
                     target=TARGETS, variant=VARIANTS, fold=FOLDS),
        # each target x variant's ensemble on the held-out test split (evaluate_ensemble), when there is one
        ensemble=expand(f"{RUNS}/{{target}}/{{variant}}/ensemble/eval/test", target=TARGETS, variant=VARIANTS)
        if ENSEMBLE else [],
    output:
        index=f"{REPORTS}/index.html",
        pages=expand(f"{REPORTS}/{{target}}.html", target=TARGETS),
    conda:
        CONDA_ENV
    log:
        f"{LOGS}/report/report.log",
    benchmark:
        f"{LOGS}/report/report.bench.tsv"
    params:
        config=merged_config,
        targets=",".join(TARGETS),
        out=lambda wc, output: str(Path(output.index).parent),
        runs=lambda wc, input: str(Path(input.evals[0]).parents[4]),  # RUNS/<target>/<variant>/fold<k>/eval/<split>
        settings=settings(cfg=CFG),
    resources:
        cpus_per_task=1,
        runtime=30,
        mem_mb=8000,
    shell:
        "sam2-3dmed report --config {params.config:q} --out {params.out:q} --runs {params.runs:q}"
        " --targets {params.targets:q} > {log:q} 2>&1"
