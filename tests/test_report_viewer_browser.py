"""The slice viewer of a target page in a real browser (headless Chromium, file://).

Needs Debian's ``chromium`` package (``apt-get install -y chromium``; CI installs it).
Without a chromium binary on PATH the tests are skipped with that reason, and only then.

The page's viewer script decodes the first embedded case (``DecompressionStream``, which
resolves after the load event), draws it, hashes the axial canvas, moves the axial slider
to another slice with an ``input`` event, hashes again, restores it, presses ArrowUp on
the view, and writes ``<body data-viewer-test="ok">`` (else ``fail:<reason>``). Chromium's
``--dump-dom`` alone dumps right after the load event, before promises settle on a
larger page; ``--virtual-time-budget`` lets the page's pending work run first.
"""

from __future__ import annotations

import base64
import re
import zlib

import pytest

from sam2_3dmed.config import load_config
from sam2_3dmed.report import build_report
from test_report import build_tree
from test_report_browser import CHROMIUM, _chromium

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary on PATH (apt-get install -y chromium)")


def _dump(tmp_path, path, timeout=180):
    return _chromium(tmp_path, "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000", "--dump-dom",
                     path.resolve().as_uri(), timeout=timeout)


def _body(dom: str) -> str:
    return re.search(r"<body[^>]*>", dom)[0]


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    root = tmp_path_factory.mktemp("viewer-browser")
    cfg_path = build_tree(root)
    out = root / "reports"
    build_report(load_config(cfg_path), cfg_path, out, runs_dir=root / "results/demo/runs", cwd=root)
    return out / "spleen.html"


def test_viewer_draws_and_the_slider_moves_the_slice(page, tmp_path):
    proc = _dump(tmp_path, page)
    assert proc.returncode == 0, proc.stderr[-2000:]
    body = _body(proc.stdout)
    assert 'data-js-errors="0"' in body, body
    assert 'data-viewer-test="ok"' in body, body
    assert "Uncaught" not in proc.stderr, [ln for ln in proc.stderr.splitlines() if "Uncaught" in ln]
    # the status line names the first case once it is decoded
    status = re.search(r'<div id="viewer-status"[^>]*>(.*?)</div>', proc.stdout, re.S)[1]
    assert "voxels of" in status and "could not" not in status
    assert re.search(r'id="viewer-axial-pos">slice \d+ of \d+ \(original', proc.stdout)


def test_corrupted_payload_fails_the_check(page, tmp_path):
    """The check can fail: data that do not inflate give data-viewer-test="fail:..."."""
    html = page.read_text(encoding="utf-8")
    garbage = base64.b64encode(zlib.compress(b"\x00" * 64)[:2] + b"\xff" * 200).decode("ascii")
    broken, n = re.subn(r'(<script type="application/octet-stream" id="viewer-data-0">)[^<]*', rf"\g<1>{garbage}",
                        html, count=1)
    assert n == 1
    path = tmp_path / "corrupted.html"
    path.write_text(broken, encoding="utf-8")
    proc = _dump(tmp_path, path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    body = _body(proc.stdout)
    assert 'data-viewer-test="fail:' in body, body
    assert "could not be decoded" in re.search(r'<div id="viewer-status"[^>]*>(.*?)</div>', proc.stdout, re.S)[1]
    assert "Uncaught" not in proc.stderr  # handled: shown on the page, not thrown
