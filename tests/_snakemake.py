"""Reading Snakemake's console output in tests."""


def job_counts(text: str) -> dict:
    """{rule: count} from Snakemake's job-stats table (empty when nothing is to be done)."""
    jobs, in_table = {}, False
    for line in text.splitlines():
        if line.startswith("job ") and "count" in line:
            in_table = True
            continue
        if in_table:
            parts = line.split()
            if not parts or parts[0] == "total":
                break
            if len(parts) == 2 and parts[1].isdigit():
                jobs[parts[0]] = int(parts[1])
    return jobs
