import os
import stat

import pytest

from sam2_3dmed.atomic import atomic_dir, atomic_file, write_json
from sam2_3dmed.errors import UserError


def test_success_renames_and_follows_umask(tmp_path):
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "a.txt").write_text("x")
    assert (tmp_path / "out" / "a.txt").read_text() == "x"
    mode = stat.S_IMODE(os.stat(tmp_path / "out").st_mode)
    mask = os.umask(0)
    os.umask(mask)
    assert mode == 0o777 & ~mask
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_failure_leaves_nothing_and_keeps_old(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_dir(final, overwrite=True) as tmp:
            (tmp / "new.txt").write_text("half")
            raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert (final / "old.txt").read_text() == "old" and not (final / "new.txt").exists()


def test_existing_refused_but_empty_dir_is_fine(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("keep")
    with pytest.raises(UserError, match="already exists"):
        with atomic_dir(tmp_path / "full"):
            pass
    (tmp_path / "empty").mkdir()
    with atomic_dir(tmp_path / "empty") as tmp:
        (tmp / "f").write_text("new")
    assert (tmp_path / "empty" / "f").read_text() == "new"


def test_unwritable_parent_path_is_a_user_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(UserError, match="cannot create output directory"):
        with atomic_dir(blocker / "sub" / "out"):
            pass


def test_atomic_file_and_json(tmp_path):
    write_json(tmp_path / "a.json", {"x": 1})
    assert (tmp_path / "a.json").read_text().strip().startswith("{")
    with pytest.raises(ValueError):
        write_json(tmp_path / "b.json", {"x": float("nan")})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]
    with pytest.raises(UserError):
        with atomic_file(tmp_path / "a.json", overwrite=False):
            pass
