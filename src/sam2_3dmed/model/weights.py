"""Meta's SAM2.1 checkpoints: registry, resumable SHA-256-checked download, content check.

``fetch_weights`` downloads ``OUT/<name>.pt`` with the same machinery as ``fetch-msd``
(resumable; a cut-off download stays as ``OUT/.<name>.pt.part`` for the next run),
checks its SHA-256, then checks that it loads with ``torch.load(weights_only=True)``
and holds exactly the keys and shapes of its backbone before the file appears. Any
other failure leaves nothing behind.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..console import log
from ..errors import UserError
from .backbone import _instantiate, load_sam2_checkpoint

BASE_URL = "https://dl.fbaipublicfiles.com/segment_anything_2/092824"

# name -> (url, sha256 of the file or None if unknown, backbone config)
#
# Where the hashes come from (Meta publishes none next to the download links; the
# values below agree across every independent source found, none disagrees):
# - Git LFS pointers (oid sha256 + size) of these files re-hosted on Hugging Face:
#   camenduru/sam2-1-hiera commit cdd35a4 (all four), Promethe-us/sam2 (tiny, base_plus),
#   ASAM-Team's upload to phenanthra/tmp, wondervictor/Mask-Adapter and
#   tictag-io-demo/sam2.1-hiera-large (large);
# - computational-cell-analytics/micro-sam, micro_sam/v2/util.py: pooch ``known_hash``
#   for exactly these dl.fbaipublicfiles.com/segment_anything_2/092824 URLs (all four),
#   so checked against Meta's server on every micro-sam download;
# - other projects pinning them beside the same URLs (a DAM4SAM-based config, all four;
#   a notebook that verifies the small download) or beside Meta's own Hugging Face repo
#   facebook/sam2.1-hiera-tiny (tiny).
# Sizes in bytes: tiny 156008466, small 184416285, base_plus 323606802, large 898083611.
WEIGHTS: dict[str, tuple[str, str | None, str]] = {
    "sam2.1_hiera_tiny": (
        f"{BASE_URL}/sam2.1_hiera_tiny.pt",
        "7402e0d864fa82708a20fbd15bc84245c2f26dff0eb43a4b5b93452deb34be69",
        "tiny",
    ),
    "sam2.1_hiera_small": (
        f"{BASE_URL}/sam2.1_hiera_small.pt",
        "6d1aa6f30de5c92224f8172114de081d104bbd23dd9dc5c58996f0cad5dc4d38",
        "small",
    ),
    "sam2.1_hiera_base_plus": (
        f"{BASE_URL}/sam2.1_hiera_base_plus.pt",
        "a2345aede8715ab1d5d31b4a509fb160c5a4af1970f199d9054ccfb746c004c5",
        "base_plus",
    ),
    "sam2.1_hiera_large": (
        f"{BASE_URL}/sam2.1_hiera_large.pt",
        "2647878d5dfa5098f2f8649825738a9345572bae2d4350a2468587ece47dd318",
        "large",
    ),
}

_SHA256_RE = re.compile(r"[0-9a-fA-F]{64}")
VERIFY_IMAGE_SIZE = 128  # keys and shapes do not depend on the image size; small is fast


def get_weights(name: str) -> tuple[str, str | None, str]:
    if name not in WEIGHTS:
        raise UserError(f"unknown weights {name!r}; choose one of: {', '.join(WEIGHTS)}")
    return WEIGHTS[name]


def check_sha256(sha256: str) -> str:
    value = sha256.strip()
    if not _SHA256_RE.fullmatch(value):
        raise UserError(f"--sha256 must be 64 hexadecimal characters, got {sha256!r}")
    return value.lower()


def verify_checkpoint(path: str | Path, backbone: str, label: str | None = None) -> None:
    """Raise a one-line InputFileError unless ``path`` loads strictly into SAM2.1 ``backbone``."""
    model = _instantiate(backbone, VERIFY_IMAGE_SIZE)
    load_sam2_checkpoint(model, path, label=label)


def fetch_weights(
    name: str,
    out_dir: str | Path,
    url: str | None = None,
    sha256: str | None = None,
    overwrite: bool = False,
    verify_hash: bool = True,
) -> Path:
    """Download SAM2.1 checkpoint ``name`` to ``OUT/<name>.pt`` and return that path.

    ``url`` is an http(s) URL, a ``file://`` URL or a local path (default: Meta's URL);
    ``sha256`` the expected hex digest (default: the registry's). ``verify_hash=False``
    skips the digest check (loudly); the content check always runs.
    """
    default_url, known, backbone = get_weights(name)
    if sha256 is not None and not verify_hash:
        raise UserError("--sha256 and --no-verify contradict each other; give one of them")
    expected = check_sha256(sha256) if sha256 is not None else known
    if not verify_hash:
        expected = None
    elif expected is None:
        raise UserError(
            f"no trusted SHA-256 is recorded for {name}; pass --sha256 HEX "
            "(or --no-verify to skip the check, not recommended)"
        )
    from ..data.fetch import fetch_file  # the shared resumable downloader

    dest = Path(out_dir).expanduser() / f"{name}.pt"
    digest = fetch_file(
        url or default_url,
        dest,
        expected,
        algorithm="sha256",
        validate=lambda path, label: verify_checkpoint(path, backbone, label),
        overwrite=overwrite,
    )
    if expected is None:
        log.warning(
            "SHA-256 NOT VERIFIED (--no-verify): %s is only known to hold SAM2.1 hiera-%s weights; "
            "its SHA-256 is %s. Compare it with a trusted source before relying on it.",
            dest,
            backbone,
            digest,
        )
    return dest
