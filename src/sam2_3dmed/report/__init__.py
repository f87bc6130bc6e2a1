"""``sam2-3dmed report``: self-contained HTML pages summarising trained and evaluated runs.

One page per target (``OUT/<target>.html``) and an index (``OUT/index.html``), each a
single file that opens from disk without network: figures are embedded as base64 PNG,
the only script (a table sorter and an error counter) is inline, no web fonts or CDNs.

Layout of the code:

* :mod:`.collect`    reads run folders (logs, summaries, eval/<split>/metrics.csv) into pandas
* :mod:`.tables`     headline, ablation and cost tables (plain dicts for the templates)
* :mod:`.figures`    matplotlib (Agg) figures as base64 PNG data URIs
* :mod:`.provenance` config, git commit, DVC hashes, package versions, date
* :mod:`.render`     jinja2 templates (``templates/*.html.j2``) -> atomic file writes
"""

from __future__ import annotations

from .render import build_report, default_out_dir, default_runs_dir

__all__ = ["build_report", "default_out_dir", "default_runs_dir"]
