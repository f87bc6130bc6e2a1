"""SAM2.1 backbone at small image sizes, strict and safe checkpoint loading, `fetch-weights`.

No real SAM2 checkpoint can be downloaded here: the checkpoints are built locally
(random init, Meta's ``{"model": state_dict}`` format) and served from 127.0.0.1.
"""

import hashlib
import logging
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sam2_3dmed.errors import ChecksumError, InputFileError, UserError
from sam2_3dmed.model import weights as weights_mod
from sam2_3dmed.model.backbone import build_sam2_base, count_parameters, load_sam2_checkpoint
from sam2_3dmed.model.weights import WEIGHTS, fetch_weights

NAME = "sam2.1_hiera_tiny"


# --- helpers and fixtures ----------------------------------------------------------


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree(root: Path) -> list[str]:
    """Every path under root, hidden ones included, to prove nothing was left behind."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def assert_one_line(err: Exception, path) -> str:
    msg = str(err)
    assert "\n" not in msg and msg.startswith(f"{path}: "), msg
    return msg


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture()
def warnings_logged():
    logger = logging.getLogger("sam2_3dmed")
    handler = _Records()
    logger.addHandler(handler)
    yield handler.messages
    logger.removeHandler(handler)


@pytest.fixture(scope="module")
def tiny_1024():
    """A SAM2.1 hiera-tiny built at Meta's 1024 px: its state dict is what Meta ships."""
    return build_sam2_base("tiny", 1024, device="cpu")


@pytest.fixture(scope="module")
def tiny_64():
    """A model for loads that must fail: they fail before any weight is copied into it."""
    return build_sam2_base("tiny", 64, device="cpu")


@pytest.fixture(scope="module")
def tiny_ckpt(tiny_1024, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "sam2.1_hiera_tiny.pt"
    torch.save({"model": tiny_1024.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def served_ckpt(tiny_1024, tmp_path_factory):
    """A tiny checkpoint in Meta's format, in float16 to halve what the HTTP tests move
    (loading casts to the model's float32); with its bytes and SHA-256."""
    path = tmp_path_factory.mktemp("served") / "sam2.1_hiera_tiny.pt"
    torch.save({"model": {k: v.half() for k, v in tiny_1024.state_dict().items()}}, path)
    data = path.read_bytes()
    return path, data, hashlib.sha256(data).hexdigest()


class Evil:
    """Pickles as a call that creates a marker file when unpickled unsafely."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


# --- building ------------------------------------------------------------------------


@pytest.mark.parametrize("size", [64, 128, 256])
def test_build_tiny_shapes(size):
    model = build_sam2_base("tiny", size, device="cpu", checkpoint=None)
    assert type(model).__name__ == "SAM2Base" and not model.training
    assert model.image_size == size
    assert all(p.device.type == "cpu" for p in model.parameters())
    f = size // 16
    assert tuple(model.sam_prompt_encoder.image_embedding_size) == (f, f)
    for layer in model.memory_attention.layers:  # RoPE grids built for this size, not 64x64
        assert layer.self_attn.freqs_cis.shape[0] == f * f
        assert layer.cross_attn_image.freqs_cis.shape[0] == f * f
    with torch.no_grad():
        out = model.forward_image(torch.zeros(2, 3, size, size))
    fpn = [tuple(t.shape) for t in out["backbone_fpn"]]
    pos = [tuple(t.shape) for t in out["vision_pos_enc"]]
    # levels 0 and 1 are already projected by the mask decoder's conv_s0 / conv_s1
    assert fpn == [(2, 32, 4 * f, 4 * f), (2, 64, 2 * f, 2 * f), (2, 256, f, f)]
    assert pos == [(2, 256, 4 * f, 4 * f), (2, 256, 2 * f, 2 * f), (2, 256, f, f)]
    assert tuple(out["vision_features"].shape) == (2, 256, f, f)


def test_random_init_warns_loudly(warnings_logged):
    build_sam2_base("tiny", 64, device=torch.device("cpu"))
    assert any("RANDOM INITIALISATION" in m and "not comparable to the paper" in m.lower() for m in warnings_logged)


@pytest.mark.parametrize("size", [100, 240, 32, 0, 1000])
def test_bad_image_size(size):
    with pytest.raises(UserError, match="multiple of 32 and at least 64"):
        build_sam2_base("tiny", size)


def test_bad_backbone_and_device():
    with pytest.raises(UserError, match="unknown backbone 'huge'.*tiny, small, base_plus, large"):
        build_sam2_base("huge", 128)
    with pytest.raises(UserError, match="invalid device"):
        build_sam2_base("tiny", 128, device="gpu0")


def test_count_parameters():
    model = build_sam2_base("tiny", 64)
    model.image_encoder.requires_grad_(False)
    counts = count_parameters(model)
    ch = counts["children"]
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    assert 38.9e6 < counts["total"] < 39.0e6  # SAM2.1 hiera-tiny: 38.96 M
    assert sum(c["total"] for c in ch.values()) == counts["total"]
    assert {"image_encoder", "memory_attention", "memory_encoder", "sam_mask_decoder", "sam_prompt_encoder"} <= set(ch)
    assert ch["image_encoder"]["trainable"] == 0 and ch["image_encoder"]["total"] > 27e6
    assert counts["trainable"] == counts["total"] - ch["image_encoder"]["total"]


# --- checkpoint loading ------------------------------------------------------------------


@pytest.mark.parametrize("size", [128, 256, 512])
def test_1024_checkpoint_loads_strictly_at_smaller_sizes(tiny_ckpt, tiny_1024, size):
    model = build_sam2_base("tiny", size, device="cpu", checkpoint=tiny_ckpt)
    got, ref = model.state_dict(), tiny_1024.state_dict()
    assert got.keys() == ref.keys()
    assert all(torch.equal(got[k], ref[k]) for k in ref)  # bit-identical


def test_bare_state_dict_loads(tiny_1024, tmp_path):
    path = tmp_path / "bare.pt"
    torch.save(tiny_1024.state_dict(), path)
    model = load_sam2_checkpoint(build_sam2_base("tiny", 64), path)
    assert torch.equal(model.no_mem_embed, tiny_1024.no_mem_embed)


@pytest.mark.parametrize("how", ["garbage", "truncated", "empty", "text", "zip-without-pickle"])
def test_corrupt_checkpoint(tiny_ckpt, tiny_64, tmp_path, how):
    bad = tmp_path / "bad.pt"
    if how == "zip-without-pickle":
        import zipfile

        with zipfile.ZipFile(bad, "w") as z:
            z.writestr("archive/other.txt", "x")
    else:
        data = tiny_ckpt.read_bytes()
        content = {"garbage": b"not a torch file " * 256, "truncated": data[: len(data) // 2], "empty": b"", "text": b"hello\n"}
        bad.write_bytes(content[how])
    with pytest.raises(InputFileError) as err:
        load_sam2_checkpoint(tiny_64, bad)
    msg = assert_one_line(err.value, bad)
    assert re.search(r"corrupt or truncated|is empty", msg), msg


def test_missing_file_and_folder(tiny_64, tmp_path):
    with pytest.raises(InputFileError, match="does not exist"):
        load_sam2_checkpoint(tiny_64, tmp_path / "nope.pt")
    with pytest.raises(InputFileError, match="is a folder"):
        load_sam2_checkpoint(tiny_64, tmp_path)


def test_small_checkpoint_into_tiny_is_refused(tmp_path):
    path = tmp_path / "small.pt"
    torch.save({"model": build_sam2_base("small", 64).state_dict()}, path)
    with pytest.raises(InputFileError) as err:
        build_sam2_base("tiny", 128, checkpoint=path)
    msg = assert_one_line(err.value, path)
    # hiera-small has 16 trunk blocks, tiny 12, and different stage widths
    assert re.search(r"not a SAM2\.1 hiera-tiny checkpoint: \d+ missing keys \(image_encoder\.", msg), msg
    assert re.search(r"; \d+ unexpected keys \(image_encoder\.trunk\.blocks\.1[2-5]\.", msg), msg
    assert "shape mismatches" in msg


def test_wrong_keys_and_shapes_are_counted(tiny_1024, tiny_64, tmp_path):
    sd = dict(tiny_1024.state_dict())
    dropped = sorted(sd)[:12]
    for k in dropped:
        del sd[k]
    sd["extra.weight"] = torch.zeros(3)
    sd["no_mem_embed"] = torch.zeros(1, 1, 128)  # model: (1, 1, 256)
    path = tmp_path / "wrong.pt"
    torch.save({"model": sd}, path)
    with pytest.raises(InputFileError) as err:
        load_sam2_checkpoint(tiny_64, path)
    msg = assert_one_line(err.value, path)
    assert f"12 missing keys ({dropped[0]}, " in msg
    assert "1 unexpected keys (extra.weight)" in msg
    assert "1 shape mismatches (e.g. no_mem_embed: file [1, 1, 128], model [1, 1, 256])" in msg


def test_not_a_state_dict(tiny_64, tmp_path):
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], path)
    with pytest.raises(InputFileError, match="not a SAM2 checkpoint: holds list"):
        load_sam2_checkpoint(tiny_64, path)


@pytest.mark.parametrize("fmt", ["torch.save", "raw-pickle"])
def test_malicious_pickle_is_refused_not_run(tiny_64, tmp_path, fmt):
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pt"
    payload = {"model": {"w": torch.zeros(2)}, "x": Evil(marker)}
    if fmt == "torch.save":
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f, protocol=2)
    with pytest.raises(InputFileError) as err:
        load_sam2_checkpoint(tiny_64, path)
    msg = assert_one_line(err.value, path)
    assert "refused: the file contains executable objects, not just weights" in msg
    assert not marker.exists()
    if fmt == "raw-pickle":  # the payload is live: an unsafe load would have run it
        with open(path, "rb") as f:
            pickle.load(f)
        assert marker.exists()


# --- fetch-weights ---------------------------------------------------------------------------

# `server` (a local HTTP server with Range support) comes from conftest.py


def test_registry():
    assert set(WEIGHTS) == {f"sam2.1_hiera_{b}" for b in ("tiny", "small", "base_plus", "large")}
    for name, (url, sha, backbone) in WEIGHTS.items():
        assert url == f"https://dl.fbaipublicfiles.com/segment_anything_2/092824/{name}.pt"
        assert sha is None or re.fullmatch(r"[0-9a-f]{64}", sha)
        assert name == f"sam2.1_hiera_{backbone}"


def test_fetch_over_http_verifies_and_loads(server, served_ckpt, tmp_path):
    path, data, sha = served_ckpt
    out = tmp_path / "weights"
    dest = fetch_weights(NAME, out, url=server.serve(path, data), sha256=sha.upper())
    assert dest == out / f"{NAME}.pt"
    assert tree(out) == [f"{NAME}.pt"]  # no .part, no temp file
    assert dest.read_bytes() == data  # and fetch_weights has loaded it strictly into hiera-tiny


def test_fetch_wrong_hash_leaves_nothing(server, served_ckpt, tmp_path):
    path, data, sha = served_ckpt
    out = tmp_path / "new" / "weights"
    url = server.serve(path, data)
    with pytest.raises(ChecksumError) as err:
        fetch_weights(NAME, out, url=url, sha256="0" * 64)
    msg = assert_one_line(err.value, url)
    assert "SHA-256 mismatch" in msg and "0" * 64 in msg and sha in msg
    assert not (tmp_path / "new").exists()


def test_fetch_right_hash_but_not_weights_leaves_nothing(server, tmp_path):
    evil = tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.zeros(2)}, "x": Evil(tmp_path / "PWNED")}, evil)
    out = tmp_path / "weights"
    out.mkdir()
    url = server.serve(evil)
    with pytest.raises(InputFileError) as err:
        fetch_weights(NAME, out, url=url, sha256=sha256_of(evil))
    assert "refused" in assert_one_line(err.value, url)
    assert tree(out) == [] and not (tmp_path / "PWNED").exists()


def test_fetch_resumes_partial_download(server, served_ckpt, tmp_path):
    path, data, sha = served_ckpt
    out = tmp_path / "weights"
    out.mkdir()
    n = 1_000_003
    (out / f".{NAME}.pt.part").write_bytes(data[:n])
    fetch_weights(NAME, out, url=server.serve(path, data), sha256=sha)
    assert server.requests == [(f"/{path.name}", f"bytes={n}-")]
    assert tree(out) == [f"{NAME}.pt"]


def test_fetch_local_path_and_existing_output(served_ckpt, tmp_path):
    path, data, sha = served_ckpt
    out = tmp_path / "weights"
    fetch_weights(NAME, out, url=str(path), sha256=sha)
    assert path.read_bytes() == data and (out / f"{NAME}.pt").read_bytes() == data  # copied, never moved
    with pytest.raises(UserError, match="already exists.*--overwrite"):
        fetch_weights(NAME, out, url=path.as_uri(), sha256=sha)
    (out / f"{NAME}.pt").write_bytes(b"old")
    with pytest.raises(ChecksumError):  # a failed overwrite keeps the old file
        fetch_weights(NAME, out, url=str(path), sha256="f" * 64, overwrite=True)
    assert tree(out) == [f"{NAME}.pt"] and (out / f"{NAME}.pt").read_bytes() == b"old"


def test_fetch_arguments(tmp_path, monkeypatch, served_ckpt, warnings_logged):
    path, data, sha = served_ckpt
    with pytest.raises(UserError, match="unknown weights 'sam2.1_hiera_huge'; choose one of: sam2.1_hiera_tiny"):
        fetch_weights("sam2.1_hiera_huge", tmp_path / "w")
    with pytest.raises(UserError, match="64 hexadecimal"):
        fetch_weights(NAME, tmp_path / "w", url=str(path), sha256="abc")
    with pytest.raises(UserError, match="contradict"):
        fetch_weights(NAME, tmp_path / "w", url=str(path), sha256="0" * 64, verify_hash=False)
    # a registry entry without a trusted hash needs --sha256, or an explicit --no-verify
    monkeypatch.setitem(weights_mod.WEIGHTS, NAME, (str(path), None, "tiny"))
    with pytest.raises(UserError, match="no trusted SHA-256 is recorded for sam2.1_hiera_tiny; pass --sha256"):
        fetch_weights(NAME, tmp_path / "w")
    assert not (tmp_path / "w").exists()
    fetch_weights(NAME, tmp_path / "w", verify_hash=False)
    assert any("SHA-256 NOT VERIFIED" in m and sha in m for m in warnings_logged)


def _cli(*args, cwd):
    env = dict(os.environ, no_proxy="127.0.0.1,localhost", NO_PROXY="127.0.0.1,localhost")
    return subprocess.run(
        [sys.executable, "-m", "sam2_3dmed.cli", "fetch-weights", *args],
        capture_output=True, text=True, cwd=cwd, env=env, timeout=300,
    )


def test_cli_wrong_hash_is_one_line(server, served_ckpt, tmp_path):
    path, data, sha = served_ckpt
    out = tmp_path / "weights"
    url = server.serve(path, data)
    res = _cli(NAME, "--out", str(out), "--url", url, "--sha256", "0" * 64, cwd=tmp_path)
    assert res.returncode == 1
    lines = res.stderr.splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith(f"error: {url}: SHA-256 mismatch")
    assert "Traceback" not in res.stderr + res.stdout
    assert not out.exists()


def test_cli_success(served_ckpt, tmp_path):
    path, data, sha = served_ckpt
    out = tmp_path / "weights"
    res = _cli(NAME, "--out", str(out), "--url", str(path), "--sha256", sha, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stderr.splitlines()[-1] == f"ok {NAME} -> {out / (NAME + '.pt')}"
    assert tree(out) == [f"{NAME}.pt"]
