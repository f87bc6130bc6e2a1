# Helpers shared by the rules (kept apart from the rules, as `snakemake --lint` asks).


def settings(**parts):
    """The config sections a job depends on, as one canonical string. Jobs carry it as a
    param: Snakemake re-runs a job when its params change (rerun trigger "params"), so
    editing one target's or variant's settings re-runs only the jobs that read them. The
    config file itself is not an input (its mtime would re-run everything)."""
    return json.dumps(parts, sort_keys=True)


def _weights(wc):
    """The SAM2.1 checkpoint a variant needs (none for random-init variants)."""
    m = variant_config(CFG, wc.variant)["model"]
    return [m["checkpoint"]] if m["pretrained"] else []


def merged_config(wc, output):
    """The merged config file every job's command reads (CONFIG_PATH). A param function
    that takes ``output`` counts as derived from the outputs, so Snakemake does not record
    it as a rerun trigger: the file's name changes with any edit of the config, while what
    a job depends on is in its ``settings`` param."""
    return CONFIG_PATH


def device(wc, output):
    """The train/evaluate jobs' --device (run.device). Derived from the outputs, like
    merged_config, so that moving a run from CPU to GPU does not re-run finished jobs."""
    return CFG["run"]["device"]
