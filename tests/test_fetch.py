"""`fetch-msd`: resumable download, MD5 check and safe extraction, against a local HTTP server."""

import hashlib
import io
import json
import os
import socket
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from sam2_3dmed.data import fetch as fetch_mod
from sam2_3dmed.data.fetch import fetch_msd
from sam2_3dmed.errors import ChecksumError, InputFileError, UserError

TASK = "Task09_Spleen"

# no retry delays, no proxy for 127.0.0.1 (conftest.py), for the tests without `server` too
pytestmark = pytest.mark.usefixtures("fast_and_local")


# --- archives ----------------------------------------------------------------


def _blob(seed: int, size: int = 150_000) -> bytes:
    out, block = bytearray(), hashlib.sha256(str(seed).encode()).digest()
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block
    return bytes(out[:size])


def msd_entries(task=TASK, cases=2, missing=()):
    """Entries of an MSD-style tar, including the macOS '._' files real MSD tars ship."""
    training = [
        {"image": f"./imagesTr/spleen_{i}.nii.gz", "label": f"./labelsTr/spleen_{i}.nii.gz"} for i in range(cases)
    ]
    dataset = {
        "name": "Spleen",
        "labels": {"0": "background", "1": "spleen"},
        "numTraining": cases,
        "training": training,
        "test": ["./imagesTs/spleen_9.nii.gz"],
    }
    entries = [("dir", f"{task}"), ("file", f"{task}/dataset.json", json.dumps(dataset).encode())]
    entries += [("file", f"{task}/._dataset.json", b"\x00\x05\x16\x07 apple double")]
    for d in ("imagesTr", "labelsTr", "imagesTs"):
        entries.append(("dir", f"{task}/{d}"))
    for i in range(cases):
        entries.append(("file", f"{task}/imagesTr/spleen_{i}.nii.gz", _blob(i)))
        entries.append(("file", f"{task}/imagesTr/._spleen_{i}.nii.gz", b"apple double"))
        entries.append(("file", f"{task}/labelsTr/spleen_{i}.nii.gz", _blob(100 + i, 20_000)))
    entries.append(("file", f"{task}/imagesTs/spleen_9.nii.gz", _blob(9)))
    entries.append(("file", f"__MACOSX/{task}/._dataset.json", b"apple double"))
    return [e for e in entries if e[1].split("/", 1)[-1] not in missing]


def build_tar(path: Path, entries) -> Path:
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for kind, name, *rest in entries:
            info = tarfile.TarInfo(name)
            info.mtime = 1_700_000_000
            if kind == "file":
                info.size = len(rest[0])
                tar.addfile(info, io.BytesIO(rest[0]))
                continue
            info.type = {
                "dir": tarfile.DIRTYPE,
                "sym": tarfile.SYMTYPE,
                "hard": tarfile.LNKTYPE,
                "fifo": tarfile.FIFOTYPE,
                "chr": tarfile.CHRTYPE,
            }[kind]
            info.mode = 0o755 if kind == "dir" else 0o644
            if kind in ("sym", "hard"):
                info.linkname = rest[0]
            tar.addfile(info)
    return path


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def tree(root: Path) -> list[str]:
    """Every path under root (hidden ones included), to prove nothing was left behind."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def assert_task_extracted(dest: Path, tar_path: Path):
    with tarfile.open(tar_path) as tar:
        expected = {
            m.name.split("/", 1)[1]: tar.extractfile(m).read()
            for m in tar.getmembers()
            if m.isfile() and m.name.startswith(f"{TASK}/") and "/._" not in m.name
        }
    got = {str(p.relative_to(dest)): p.read_bytes() for p in dest.rglob("*") if p.is_file()}
    assert got == expected
    assert not [p for p in dest.rglob("._*")]


@pytest.fixture()
def spleen_tar(tmp_path):
    (tmp_path / "src").mkdir()
    return build_tar(tmp_path / "src" / "Task09_Spleen.tar", msd_entries())


# --- download, verify, extract -------------------------------------------------------


def test_download_verifies_and_extracts(server, spleen_tar, tmp_path):
    out = tmp_path / "out"
    dest = fetch_msd(TASK, out, url=server.serve(spleen_tar), md5=md5_of(spleen_tar))
    assert dest == out / TASK
    assert_task_extracted(dest, spleen_tar)
    assert not (dest / "__MACOSX").exists() and not (out / "__MACOSX").exists()
    assert os.listdir(out) == [TASK]  # no .part, no archive, no temp dirs
    assert server.requests == [(f"/{spleen_tar.name}", None)]


def test_keep_archive_and_uppercase_md5(server, spleen_tar, tmp_path):
    out = tmp_path / "out"
    fetch_msd(TASK, out, url=server.serve(spleen_tar), md5=md5_of(spleen_tar).upper(), keep_archive=True)
    assert sorted(os.listdir(out)) == [TASK, f"{TASK}.tar"]
    assert md5_of(out / f"{TASK}.tar") == md5_of(spleen_tar)


@pytest.mark.parametrize("as_url", [False, True], ids=["path", "file-url"])
def test_local_tar_is_read_in_place(spleen_tar, tmp_path, as_url):
    out = tmp_path / "out"
    before = spleen_tar.read_bytes()
    url = spleen_tar.as_uri() if as_url else str(spleen_tar)
    dest = fetch_msd(TASK, out, url=url, md5=md5_of(spleen_tar), keep_archive=True)
    assert_task_extracted(dest, spleen_tar)
    assert os.listdir(out) == [TASK]  # not copied, even with keep_archive
    assert spleen_tar.read_bytes() == before


def test_resume_sends_range_request(server, spleen_tar, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    data = spleen_tar.read_bytes()
    n = 123_457
    (out / f".{TASK}.tar.part").write_bytes(data[:n])
    dest = fetch_msd(TASK, out, url=server.serve(spleen_tar), md5=md5_of(spleen_tar))
    assert server.requests == [(f"/{spleen_tar.name}", f"bytes={n}-")]
    assert_task_extracted(dest, spleen_tar)
    assert os.listdir(out) == [TASK]


def test_server_ignoring_range_restarts_from_zero(server, spleen_tar, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    # garbage in the .part: appending to it instead of restarting would fail the MD5
    (out / f".{TASK}.tar.part").write_bytes(b"x" * 50_000)
    server.ignore_range = True
    dest = fetch_msd(TASK, out, url=server.serve(spleen_tar), md5=md5_of(spleen_tar))
    assert server.requests == [(f"/{spleen_tar.name}", "bytes=50000-")]
    assert_task_extracted(dest, spleen_tar)


def test_complete_part_answered_416(server, spleen_tar, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    data = spleen_tar.read_bytes()
    (out / f".{TASK}.tar.part").write_bytes(data)
    dest = fetch_msd(TASK, out, url=server.serve(spleen_tar), md5=md5_of(spleen_tar))
    assert server.requests == [(f"/{spleen_tar.name}", f"bytes={len(data)}-")]
    assert_task_extracted(dest, spleen_tar)


def test_interrupted_download_is_resumed(server, spleen_tar, tmp_path):
    url = server.serve(spleen_tar)
    server.cut = 1
    dest = fetch_msd(TASK, tmp_path / "out", url=url, md5=md5_of(spleen_tar))
    half = len(spleen_tar.read_bytes()) // 2
    assert server.requests == [(f"/{spleen_tar.name}", None), (f"/{spleen_tar.name}", f"bytes={half}-")]
    assert_task_extracted(dest, spleen_tar)


def test_stalled_download_times_out_and_resumes(server, spleen_tar, tmp_path, monkeypatch):
    monkeypatch.setattr(fetch_mod, "TIMEOUT_S", 0.3)
    url = server.serve(spleen_tar)
    server.stall = 1
    dest = fetch_msd(TASK, tmp_path / "out", url=url, md5=md5_of(spleen_tar))
    assert len(server.requests) == 2 and server.requests[1][1] is not None
    assert_task_extracted(dest, spleen_tar)


def test_gives_up_after_retries_and_keeps_part_for_resume(server, spleen_tar, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    part = out / f".{TASK}.tar.part"
    part.write_bytes(spleen_tar.read_bytes()[:1000])
    url = server.serve(spleen_tar)
    server.status = 503
    with pytest.raises(UserError, match="after 5 attempts.*HTTP 503.*run again to resume"):
        fetch_msd(TASK, out, url=url, md5=md5_of(spleen_tar))
    assert len(server.requests) == fetch_mod.MAX_ATTEMPTS
    assert tree(out) == [part.name] and part.stat().st_size == 1000

    server.status = None  # the next run resumes where the last one stopped
    fetch_msd(TASK, out, url=url, md5=md5_of(spleen_tar))
    assert server.requests[-1] == (f"/{spleen_tar.name}", "bytes=1000-")
    assert os.listdir(out) == [TASK]


def test_ctrl_c_during_extraction_keeps_verified_download(server, spleen_tar, tmp_path, monkeypatch):
    out = tmp_path / "out"
    url = server.serve(spleen_tar)

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(fetch_mod, "_extract", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fetch_msd(TASK, out, url=url, md5=md5_of(spleen_tar))
    assert tree(out) == [f".{TASK}.tar.part"]  # no temp dir, the download is kept

    monkeypatch.undo()
    monkeypatch.setattr(fetch_mod, "RETRY_DELAY_S", 0.0)
    dest = fetch_msd(TASK, out, url=url, md5=md5_of(spleen_tar))
    size = len(spleen_tar.read_bytes())
    assert server.requests[-1] == (f"/{spleen_tar.name}", f"bytes={size}-")  # nothing re-downloaded
    assert_task_extracted(dest, spleen_tar)
    assert os.listdir(out) == [TASK]


def test_unreachable_server_leaves_nothing(tmp_path):
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "new" / "out"
    with pytest.raises(UserError, match="download failed after 5 attempts"):
        fetch_msd(TASK, out, url=f"http://127.0.0.1:{port}/x.tar", md5="0" * 32)
    assert not (tmp_path / "new").exists()


def test_http_404_fails_at_once(server, tmp_path):
    with pytest.raises(UserError, match="HTTP 404"):
        fetch_msd(TASK, tmp_path / "out", url=server.url("nope.tar"), md5="0" * 32)
    assert len(server.requests) == 1
    assert not (tmp_path / "out").exists()


def test_wrong_md5_leaves_nothing(server, spleen_tar, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("user data")
    url = server.serve(spleen_tar)
    with pytest.raises(ChecksumError) as err:
        fetch_msd(TASK, out, url=url, md5="0" * 32)
    msg = str(err.value)
    assert url in msg and "0" * 32 in msg and md5_of(spleen_tar) in msg and "\n" not in msg
    assert tree(out) == ["mine.txt"]


def test_wrong_md5_of_local_tar(spleen_tar, tmp_path):
    with pytest.raises(ChecksumError, match="Task09_Spleen.tar: MD5 mismatch"):
        fetch_msd(TASK, tmp_path / "out", url=str(spleen_tar), md5="f" * 32)
    assert not (tmp_path / "out").exists()
    assert spleen_tar.exists()  # the user's file is never deleted


@pytest.mark.parametrize("md5", ["abc", "g" * 32, "0" * 33])
def test_malformed_md5_refused(spleen_tar, tmp_path, md5):
    with pytest.raises(UserError, match="32 hexadecimal"):
        fetch_msd(TASK, tmp_path / "out", url=str(spleen_tar), md5=md5)
    assert not (tmp_path / "out").exists()


def test_unknown_task_lists_known_ones(tmp_path):
    with pytest.raises(UserError, match="Task06_Lung.*Task09_Spleen"):
        fetch_msd("Task99_Nope", tmp_path / "out")


def test_unsupported_scheme_and_missing_file(tmp_path):
    with pytest.raises(UserError, match="unsupported URL scheme"):
        fetch_msd(TASK, tmp_path / "out", url="ftp://example.org/x.tar")
    with pytest.raises(InputFileError, match="archive does not exist"):
        fetch_msd(TASK, tmp_path / "out", url=str(tmp_path / "missing.tar"))
    assert not (tmp_path / "out").exists()


# --- safe extraction -------------------------------------------------------------


UNSAFE = {
    "absolute": ("file", "/tmp/sam2-3dmed-evil", b"x"),
    "dotdot": ("file", f"{TASK}/../evil", b"x"),
    "symlink-outside": ("sym", f"{TASK}/imagesTr/evil", "../../../evil"),
    "symlink-absolute": ("sym", f"{TASK}/evil", "/etc/passwd"),
    "hardlink-outside": ("hard", f"{TASK}/evil", "other/file"),
    "hardlink-absolute": ("hard", f"{TASK}/evil", "/etc/passwd"),
    "fifo": ("fifo", f"{TASK}/evil"),
    "device": ("chr", f"{TASK}/evil"),
    # lexically inside, but a/b -> .. makes a/b/.. resolve above the task folder:
    # only the 'data' filter, which resolves real paths, sees it
    "symlink-chain": ("sym", f"{TASK}/c", "a/b/.."),
}


@pytest.fixture(params=["tarfile filter", "own checks"])
def extraction(request, monkeypatch):
    """Both extraction paths: tarfile's 'data' filter, and the checks made without it (Pythons
    before 3.11.4, e.g. Debian 12's 3.11.2, lack the filter and TarInfo.replace)."""
    if request.param == "own checks":
        monkeypatch.setattr(fetch_mod, "_HAS_DATA_FILTER", False)
        monkeypatch.delattr(tarfile.TarInfo, "replace", raising=False)
    elif not fetch_mod._HAS_DATA_FILTER:
        pytest.skip(f"this Python ({sys.version.split()[0]}) has no tarfile extraction filter")
    return request.param


@pytest.mark.parametrize("case", sorted(UNSAFE))
def test_unsafe_members_refused(tmp_path, case, extraction):
    entries = msd_entries()
    if case == "symlink-chain":
        entries += [("dir", f"{TASK}/a"), ("sym", f"{TASK}/a/b", "..")]
    entries.append(UNSAFE[case])
    tar_path = build_tar(tmp_path / "evil.tar", entries)
    out = tmp_path / "out"
    with pytest.raises(InputFileError) as err:
        fetch_msd(TASK, out, url=str(tar_path), md5=md5_of(tar_path))
    msg = str(err.value)
    member = UNSAFE[case][1]
    assert msg.startswith(f"{tar_path}: refusing member") and member in msg
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.tar"]
    assert not Path("/tmp/sam2-3dmed-evil").exists()


def test_unsafe_download_is_deleted(server, tmp_path):
    tar_path = build_tar(tmp_path / "evil.tar", msd_entries() + [UNSAFE["dotdot"]])
    out = tmp_path / "out"
    with pytest.raises(InputFileError, match="refusing member"):
        fetch_msd(TASK, out, url=server.serve(tar_path), md5=md5_of(tar_path))
    assert not out.exists()


def test_links_inside_the_task_are_kept(tmp_path, extraction):
    entries = msd_entries() + [
        ("sym", f"{TASK}/imagesTr/alias.nii.gz", "spleen_0.nii.gz"),
        ("hard", f"{TASK}/imagesTr/copy.nii.gz", f"{TASK}/imagesTr/spleen_1.nii.gz"),
    ]
    tar_path = build_tar(tmp_path / "links.tar", entries)
    dest = fetch_msd(TASK, tmp_path / "out", url=str(tar_path), md5=md5_of(tar_path))
    assert (dest / "imagesTr/alias.nii.gz").read_bytes() == _blob(0)
    assert (dest / "imagesTr/copy.nii.gz").read_bytes() == _blob(1)


@pytest.mark.parametrize("how", ["garbage", "truncated", "empty"])
def test_corrupt_tar(tmp_path, spleen_tar, how):
    bad = tmp_path / "bad.tar"
    data = spleen_tar.read_bytes()
    bad.write_bytes({"garbage": b"not a tar archive" * 100, "truncated": data[: len(data) - 100_000], "empty": b""}[how])
    out = tmp_path / "out"
    with pytest.raises(InputFileError, match=r"bad\.tar: not a valid or complete tar archive"):
        fetch_msd(TASK, out, url=str(bad), md5=md5_of(bad))
    assert not out.exists()


@pytest.mark.parametrize("task_in_tar", [TASK, "Task06_Lung"])
def test_tar_without_dataset_json(tmp_path, task_in_tar):
    entries = [e for e in msd_entries(task=task_in_tar) if not e[1].endswith("/dataset.json")]
    tar_path = build_tar(tmp_path / "x.tar", entries if task_in_tar == TASK else msd_entries(task=task_in_tar))
    with pytest.raises(InputFileError, match=f"no {TASK}/dataset.json in the archive"):
        fetch_msd(TASK, tmp_path / "out", url=str(tar_path), md5=md5_of(tar_path))
    assert not (tmp_path / "out").exists()


def test_dataset_json_listing_missing_file(tmp_path):
    tar_path = build_tar(tmp_path / "x.tar", msd_entries(missing={"labelsTr/spleen_1.nii.gz"}))
    out = tmp_path / "out"
    with pytest.raises(InputFileError) as err:
        fetch_msd(TASK, out, url=str(tar_path), md5=md5_of(tar_path))
    msg = str(err.value)
    assert "labelsTr/spleen_1.nii.gz which does not exist" in msg and ".tmp-" not in msg
    assert msg.startswith(f"{tar_path}: {TASK}/dataset.json")
    assert not out.exists()


# --- existing output -------------------------------------------------------------------


def test_existing_destination_refused_before_download(server, spleen_tar, tmp_path):
    out = tmp_path / "out"
    (out / TASK).mkdir(parents=True)
    (out / TASK / "mine.txt").write_text("keep me")
    with pytest.raises(UserError, match="already exists.*--overwrite"):
        fetch_msd(TASK, out, url=server.serve(spleen_tar), md5=md5_of(spleen_tar))
    assert server.requests == []
    assert tree(out) == [TASK, f"{TASK}/mine.txt"]


def test_overwrite_replaces_destination(server, spleen_tar, tmp_path):
    out = tmp_path / "out"
    (out / TASK).mkdir(parents=True)
    (out / TASK / "mine.txt").write_text("old")
    dest = fetch_msd(TASK, out, url=server.serve(spleen_tar), md5=md5_of(spleen_tar), overwrite=True)
    assert_task_extracted(dest, spleen_tar)
    assert os.listdir(out) == [TASK]


def test_failed_overwrite_keeps_old_destination(tmp_path):
    out = tmp_path / "out"
    (out / TASK).mkdir(parents=True)
    (out / TASK / "mine.txt").write_text("old")
    tar_path = build_tar(tmp_path / "x.tar", msd_entries(missing={"imagesTs/spleen_9.nii.gz"}))
    with pytest.raises(InputFileError):
        fetch_msd(TASK, out, url=str(tar_path), md5=md5_of(tar_path), overwrite=True)
    assert tree(out) == [TASK, f"{TASK}/mine.txt"]


# --- command line ------------------------------------------------------------------------


def _cli(*args, cwd):
    env = dict(os.environ, no_proxy="127.0.0.1,localhost", NO_PROXY="127.0.0.1,localhost")
    return subprocess.run(
        [sys.executable, "-m", "sam2_3dmed.cli", "fetch-msd", *args],
        capture_output=True, text=True, cwd=cwd, env=env, timeout=120,
    )


def test_cli_wrong_md5_is_one_line(server, spleen_tar, tmp_path):
    out = tmp_path / "out"
    for url in (str(spleen_tar), server.serve(spleen_tar)):
        res = _cli(TASK, "--out", str(out), "--url", url, "--md5", "0" * 32, cwd=tmp_path)
        assert res.returncode != 0
        lines = res.stderr.splitlines()
        assert len(lines) == 1, res.stderr
        assert lines[0].startswith("error:") and spleen_tar.name in lines[0] and "MD5 mismatch" in lines[0]
        assert "Traceback" not in res.stderr + res.stdout
        assert not out.exists()


def test_cli_success(spleen_tar, tmp_path):
    out = tmp_path / "out"
    res = _cli(TASK, "--out", str(out), "--url", str(spleen_tar), "--md5", md5_of(spleen_tar), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert_task_extracted(out / TASK, spleen_tar)
