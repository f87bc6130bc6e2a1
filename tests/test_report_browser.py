"""The report pages in a real browser: headless Chromium opens them from disk (file://).

Needs Debian's ``chromium`` package (``apt-get install -y chromium``; CI installs it).
Without a chromium binary on PATH the tests are skipped with that reason, and only then.

What is checked, for ``index.html`` and a target page of the fixture tree that
``test_report.build_tree`` writes:

* no JavaScript errors: the pages count ``window.onerror`` events from the first script
  on and write the count to ``<body data-js-errors="N">``; ``--dump-dom`` returns the DOM
  after the load event, so the attribute must read 0 (and Chromium's own console log on
  stderr must show no "Uncaught" exception);
* the table sorter works: the page sorts a detached copy of each sortable table by every
  numeric column, both ways, checks the order and writes ``data-sort-test="ok"``;
* a screenshot (1280x2000) renders: a PNG over 10 kB that is not a single colour.
"""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from sam2_3dmed.config import load_config
from sam2_3dmed.report import build_report
from test_report import build_tree

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary on PATH (apt-get install -y chromium)")


def _chromium(tmp_path, *args, timeout=180):
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars",
           f"--user-data-dir={tmp_path / 'chromium-profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    cfg_path = build_tree(root)
    out = root / "reports"
    build_report(load_config(cfg_path), cfg_path, out, runs_dir=root / "results/demo/runs", cwd=root)
    return out


@pytest.mark.parametrize("page,sortable", [("index.html", False), ("spleen.html", True)])
def test_page_has_no_js_errors_and_sorts(report_dir, tmp_path, page, sortable):
    url = (report_dir / page).resolve().as_uri()
    proc = _chromium(tmp_path, "--enable-logging=stderr", "--v=0", "--dump-dom", url)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 'data-js-errors="0"' in proc.stdout, proc.stdout[-2000:]
    assert "Uncaught" not in proc.stderr, [ln for ln in proc.stderr.splitlines() if "Uncaught" in ln]
    assert f'data-sort-test="{"ok" if sortable else "none"}"' in proc.stdout


@pytest.mark.parametrize("page", ["index.html", "spleen.html"])
def test_screenshot(report_dir, tmp_path, page):
    from PIL import Image

    shot = tmp_path / f"{page}.png"
    proc = _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,2000", (report_dir / page).resolve().as_uri())
    assert proc.returncode == 0 and shot.is_file(), proc.stderr[-2000:]
    assert shot.stat().st_size > 10_000
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (2000, 1280)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 10  # not a blank (single-colour) page


def test_error_counter_catches_errors(report_dir, tmp_path):
    """The check above can fail: a page with a broken script reports data-js-errors="1"."""
    broken = tmp_path / "broken.html"
    html = (report_dir / "spleen.html").read_text(encoding="utf-8")
    broken.write_text(html.replace("</h1>", "</h1><script>undefinedFunction();</script>", 1), encoding="utf-8")
    proc = _chromium(tmp_path, "--dump-dom", broken.resolve().as_uri())
    assert 'data-js-errors="1"' in proc.stdout
