"""Config loading: defaults, deep merge, schema errors that name the bad key."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sam2_3dmed.config import deep_merge, defaults, load_config
from sam2_3dmed.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path, obj, name="c.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(obj) if not isinstance(obj, str) else obj)
    return p


@pytest.mark.parametrize("name", ["config.yaml", "demo.yaml", "rehearsal.yaml"])
def test_shipped_configs_validate(name):
    cfg = load_config(REPO / "config" / name)
    assert set(cfg["run"]["targets"]) <= set(cfg["targets"])


def test_defaults_validate_and_cover_all_targets():
    cfg = load_config()
    assert {"spleen", "pancreas", "pancreas_tumour", "lung_tumour"} <= set(cfg["targets"])
    assert cfg["targets"]["pancreas"]["labels"] == [1, 2]


def test_run_folds_all_is_every_fold():
    assert load_config()["run"]["folds"] == [0, 1, 2, 3, 4]  # the default: a cross-validated run
    real = load_config(REPO / "config" / "config.yaml")
    assert real["run"]["folds"] == [0, 1, 2, 3, 4] and real["run"]["device"] == "cuda"
    assert load_config(overrides={"splits": {"folds": 3}})["run"]["folds"] == [0, 1, 2]
    assert load_config(overrides={"run": {"folds": [1]}})["run"]["folds"] == [1]
    demo = load_config(REPO / "config" / "demo.yaml")
    assert demo["run"]["folds"] == [0] and demo["run"]["device"] == "auto"


def test_deep_merge_semantics():
    base = {"a": {"b": 1, "c": [1, 2]}, "d": 1}
    assert deep_merge(base, {"a": {"c": [3]}}) == {"a": {"b": 1, "c": [3]}, "d": 1}
    assert base == {"a": {"b": 1, "c": [1, 2]}, "d": 1}  # inputs untouched


@pytest.mark.parametrize(
    "override,expect",
    [
        ({"targets": {"spleen": {"hu_windw": [0, 1]}}}, "targets.spleen.hu_windw: unknown key"),
        ({"prepare": {"storage_dtype": "int8"}}, "prepare.storage_dtype"),
        ({"splits": {"folds": 1}}, "splits.folds"),
        ({"bogus": 1}, "bogus: unknown key"),
        ({"targets": {"spleen": {"hu_window": [300, 100]}}}, "targets.spleen.hu_window"),
        ({"targets": {"spleen": {"task": "Task99_Foo"}}}, "targets.spleen.task"),
        ({"run": {"targets": ["liver"]}}, "run.targets: unknown target 'liver'"),
        ({"targets": {"liver": {"task": "Task09_Spleen"}}}, "targets.liver: 'labels' is a required property"),
        ({"targets": {"spleen": {"spacing_mm": [0.8]}}}, "targets.spleen.spacing_mm"),
        ({"run": {"folds": "some"}}, "run.folds"),
        ({"run": {"folds": [0, 7]}}, "run.folds: fold 7 does not exist"),
        ({"run": {"device": "gpu"}}, "run.device"),
        ({"evaluate": {"max_cases": 0}}, "evaluate.max_cases"),
        ({"data": {"synthetic": {"profile": "huge"}}}, "data.synthetic.profile"),
    ],
)
def test_bad_keys_are_named(tmp_path, override, expect):
    p = write(tmp_path, override)
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    msg = str(exc.value)
    assert msg.startswith(str(p)) and expect in msg and "\n" not in msg


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_config(write(tmp_path, "a: [1,\n b: 2\n"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(write(tmp_path, "- 1\n- 2\n"))


def test_validate_config_cli(tmp_path):
    bad = write(tmp_path, {"targets": {"spleen": {"hu_windw": [0, 1]}}})
    r = subprocess.run([sys.executable, "-m", "sam2_3dmed.cli", "validate-config", str(bad)],
                       capture_output=True, text=True)
    assert r.returncode == 1
    assert r.stderr.strip() == f"error: {bad}: targets.spleen.hu_windw: unknown key"
    ok = subprocess.run([sys.executable, "-m", "sam2_3dmed.cli", "validate-config", str(REPO / "config/demo.yaml")],
                        capture_output=True, text=True)
    assert ok.returncode == 0 and yaml.safe_load(ok.stdout)["data"]["source"] == "synthetic"


def test_every_default_key_is_documented():
    doc = (REPO / "config" / "README.md").read_text()
    def keys(d, prefix=""):
        for k, v in d.items():
            if prefix in ("targets.", "variants."):  # user-named entries: documented once, generically
                if prefix == "targets.":
                    yield from keys(v, "targets.<name>.")
                return
            yield prefix + k
            if isinstance(v, dict):
                yield from keys(v, prefix + k + ".")
    missing = [k for k in keys(defaults()) if f"`{k}`" not in doc]
    assert not missing, f"undocumented config keys: {missing}"
