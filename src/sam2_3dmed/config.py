"""Configuration: built-in defaults, deep-merged user YAML, JSON-schema validation.

Errors name the file and the dotted key, e.g.
``config/demo.yaml: targets.spleen.hu_windw: unknown key``.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import math
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from .atomic import atomic_file
from .errors import ConfigError, UserError


@lru_cache(maxsize=1)
def _schema() -> dict:
    return json.loads(resources.files("sam2_3dmed").joinpath("schemas/config.schema.json").read_text())


@lru_cache(maxsize=1)
def _defaults_text() -> str:
    return resources.files("sam2_3dmed").joinpath("defaults.yaml").read_text()


def defaults() -> dict:
    return yaml.safe_load(_defaults_text())


def deep_merge(base: dict, override: dict) -> dict:
    """Mappings merge recursively; anything else in ``override`` replaces ``base``."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _dotted(path) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


def _format_error(err: jsonschema.ValidationError) -> str:
    where = _dotted(err.absolute_path)
    if err.validator == "additionalProperties":
        extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
        keys = [f"{where}.{k}" if err.absolute_path else k for k in extra]
        return f"{', '.join(keys)}: unknown key"
    if err.validator == "required":
        return f"{where}: {err.message}"
    if err.validator == "propertyNames":
        return f"{where}: name {err.instance!r} must be lower_snake_case"
    if err.validator == "oneOf":
        return f"{where}: {err.instance!r} is not valid here"
    return f"{where}: {err.message}"


def validate(cfg: dict, source: str = "config") -> dict:
    """Validate a merged config; raise ConfigError naming the first bad key."""
    validator = jsonschema.Draft202012Validator(_schema())
    errors = sorted(validator.iter_errors(cfg), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if errors:
        raise ConfigError(_format_error(errors[0]), source)
    unknown = [t for t in cfg["run"]["targets"] if t not in cfg["targets"]]
    if unknown:
        raise ConfigError(f"run.targets: unknown target {unknown[0]!r}; defined: {', '.join(cfg['targets'])}", source)
    unknown = [v for v in cfg["run"]["variants"] if v not in cfg["variants"]]
    if unknown:
        raise ConfigError(f"run.variants: unknown variant {unknown[0]!r}; defined: {', '.join(cfg['variants'])}", source)
    if cfg["run"]["folds"] == "all":  # every fold of the cross-validation (the real run)
        cfg["run"]["folds"] = list(range(cfg["splits"]["folds"]))
    bad_fold = [f for f in cfg["run"]["folds"] if f >= cfg["splits"]["folds"]]
    if bad_fold:
        raise ConfigError(f"run.folds: fold {bad_fold[0]} does not exist (splits.folds is {cfg['splits']['folds']})", source)
    for name, tgt in cfg["targets"].items():
        lo, hi = tgt["hu_window"]
        if not lo < hi:
            raise ConfigError(f"targets.{name}.hu_window: lower bound must be below upper bound", source)
    return cfg


def load_config(path: str | Path | None = None, overrides: dict | None = None, source: str | None = None) -> dict:
    """Defaults, then the YAML file at ``path`` (if any), then ``overrides``; validated.

    Problems with the file name the file; a key that fails validation names ``source``
    (default: the file, or "built-in defaults")."""
    cfg = defaults()
    if path is not None:
        p = Path(path)
        if p.is_dir():
            raise ConfigError("is a folder, not a config file", p)
        if not p.is_file():
            raise ConfigError("config file does not exist", p)
        try:
            user = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark else ""
            raise ConfigError(f"not valid YAML{where}", p) from None
        except UnicodeDecodeError:
            raise ConfigError("not valid YAML (not UTF-8 text; a binary file?)", p) from None
        except OSError as exc:
            raise ConfigError(f"cannot read the config file ({exc.strerror or exc})", p) from None
        if not isinstance(user, dict):
            raise ConfigError("top level must be a mapping", p)
        cfg = deep_merge(cfg, user)
    if overrides:
        cfg = deep_merge(cfg, overrides)
    return validate(cfg, source or (str(path) if path is not None else "built-in defaults"))


def variant_config(cfg: dict, variant: str) -> dict:
    """The config with the named variant's model/train overrides applied, validated."""
    if variant not in cfg["variants"]:
        raise UserError(f"unknown variant {variant!r}; defined variants: {', '.join(sorted(cfg['variants']))}")
    out = deep_merge(cfg, cfg["variants"][variant])
    validate(out, f"variants.{variant}")
    m = out["model"]
    if m["arch"] in ("unet3d", "nnunet") and m["pretrained"]:
        raise ConfigError(f"model.pretrained: the {m['arch']} architecture has no pretrained weights; set it to false",
                          f"variants.{variant}")
    if m["arch"] == "unet3d":
        n, strides = len(m["unet_channels"]), m["unet_strides"]
        if len(strides) != n - 1:
            raise ConfigError(f"model.unet_strides: needs {n - 1} entries, one per level after the first of the "
                              f"{n} in model.unet_channels; got {len(strides)}", f"variants.{variant}")
        xy = math.prod(s[1] for s in strides), math.prod(s[2] for s in strides)
        if m["image_size"] % xy[0] or m["image_size"] % xy[1]:
            raise ConfigError(f"model.image_size: {m['image_size']} is not divisible by the U-Net's total in-plane "
                              f"stride {xy[0]}x{xy[1]} (model.unet_strides)", f"variants.{variant}")
    if m["pretrained"] and not m["checkpoint"]:
        raise ConfigError(
            "model.checkpoint: required when model.pretrained is true (get one with sam2-3dmed fetch-weights), "
            "or set model.pretrained: false for random init", f"variants.{variant}"
        )
    if m["bd_fusion"] and not m["bd"]:
        raise ConfigError("model.bd_fusion: needs model.bd: true", f"variants.{variant}")
    return out


def target_config(cfg: dict, name: str) -> dict:
    """The named target's settings; a clear error for unknown names."""
    try:
        return cfg["targets"][name]
    except KeyError:
        raise UserError(f"unknown target {name!r}; defined targets: {', '.join(sorted(cfg['targets']))}") from None


# ------------------------------------------------------------------ the Snakemake workflow's config

#: The config the workflow runs when no --configfile (nor the older config_file key) is given.
DEFAULT_WORKFLOW_CONFIG = "config/config.yaml"
#: ``--config config_file=FILE``: the older way of choosing the config (still accepted).
LEGACY_CONFIG_KEY = "config_file"


def _typed(value: Any) -> Any:
    """Snakemake parses a nested ``--config`` value with YAML's BaseLoader, so every leaf
    of ``run='{"folds": [0, 1]}'`` arrives as a string ('0', '1'). Read each string leaf
    again as YAML would read it in a config file (numbers, booleans, null); anything else
    stays a string."""
    if isinstance(value, dict):
        return {k: _typed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_typed(v) for v in value]
    if isinstance(value, str):
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            return value
        if isinstance(parsed, (bool, int, float)) or (parsed is None and value.strip() in ("null", "Null", "NULL", "~")):
            return parsed
    return value


def _shown(path: str | Path) -> str:
    """A path as a user typed it: relative to the working folder when inside it."""
    p = Path(path)
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p)


def workflow_config(merged: dict, configfiles, overrides) -> tuple[dict, str]:
    """The validated config of one Snakemake run, and a label naming where it came from.

    Built-in defaults, then the ``--configfile`` files (or, without any, the file of
    ``--config config_file=FILE``, or :data:`DEFAULT_WORKFLOW_CONFIG`), then the other
    ``--config`` overrides, deep-merged in that order; validated as a whole, so an unknown
    key, target or variant is an error before any job is planned.

    ``merged`` is Snakemake's ``config`` (the --configfile files with the overrides merged
    in), ``configfiles`` the --configfile paths and ``overrides`` the --config mapping.
    """
    overrides = _typed(dict(overrides))
    legacy = overrides.pop(LEGACY_CONFIG_KEY, None)
    files = [_shown(f) for f in configfiles]
    if legacy is not None and files:
        raise ConfigError(f"choose the config once: --configfile {files[0]} or --config {LEGACY_CONFIG_KEY}={legacy}, "
                          "not both", "--config")
    if legacy is not None and not isinstance(legacy, str):
        raise ConfigError(f"{LEGACY_CONFIG_KEY}: must be a file name, got {legacy!r}", "--config")
    extra = " + --config" if overrides else ""
    if not files:
        base = legacy or DEFAULT_WORKFLOW_CONFIG
        source = f"{base}{extra}"
        cfg = load_config(base, overrides=overrides, source=source)
    else:
        # Snakemake has merged the files (in order) and the untyped overrides: type those again
        user = deep_merge({k: v for k, v in merged.items() if k != LEGACY_CONFIG_KEY}, overrides)
        source = " + ".join(files) + extra
        cfg = validate(deep_merge(defaults(), user), source)
    for variant in cfg["run"]["variants"]:  # each variant's own checks (weights, U-Net geometry) too
        try:
            if variant_config(cfg, variant)["model"]["arch"] == "nnunet":
                require_nnunet(f"variant {variant!r}")
        except ConfigError as exc:
            raise ConfigError(str(exc), source) from None
    return cfg, source


NNUNET_MISSING = ("{what} needs nnunetv2, an optional extra: pip install -e '.[nnunet]' "
                  "(make setup installs it)")


def require_nnunet(what: str = "the nnunet variant") -> None:
    """A one-line error, before anything runs, when nnU-Net v2 is not installed."""
    if importlib.util.find_spec("nnunetv2") is None:
        raise ConfigError(NNUNET_MISSING.format(what=what), "run.variants")


def write_effective_config(cfg: dict, folder: str | Path) -> Path:
    """Store the merged config where every job reads it: ``FOLDER/<hash>.yaml``, named by
    its content (a changed config is a new file, so a job never sees it change under it,
    and two runs with different overrides never share one). Written atomically, once."""
    text = yaml.safe_dump(cfg, sort_keys=False)
    path = Path(folder) / f"{hashlib.sha256(text.encode()).hexdigest()[:12]}.yaml"
    if not path.is_file():
        with atomic_file(path) as tmp:
            tmp.write_text("# sam2-3dmed: the merged config of a workflow run (built-in defaults, config files,\n"
                           "# --config overrides). Every job of the run reads it; its name is a hash of its content.\n"
                           + text, encoding="utf-8")
    return path


def results_root(cfg: dict) -> Path:
    """Where the workflow writes runs, metrics, logs and reports: ``run.results``, or by
    default ``results`` for real MSD data and ``results/demo`` for synthetic data."""
    if cfg["run"]["results"]:
        return Path(cfg["run"]["results"])
    return Path("results" if cfg["data"]["source"] == "msd" else "results/demo")


def mode_prompts(mode: str) -> int | None:
    """Simulated prompts of an evaluation mode (``evaluate.modes`` x ``evaluate.prompt_counts``):
    0 (``auto``), 1 (``prompted``), k (``prompted_k<k>``: k prompts on k slices); None for a
    mode of another name. The one reader of these names (evaluate writes, the report reads)."""
    if mode == "auto":
        return 0
    if mode == "prompted":
        return 1
    k = mode.removeprefix("prompted_k")
    return int(k) if k != mode and k.isdigit() and k.isascii() else None


#: evaluate.robustness's perturbations -> the prompt kind each one perturbs (None: evaluate.prompt's)
PERTURBATIONS = {"box_jitter": "box", "point_offset": "point", "key_slice": None}
#: evaluate.directions's modes: auto mode one direction at a time
DIRECTION_MODES = {"auto_forward": "forward", "auto_backward": "backward"}


@dataclass(frozen=True)
class ModeInfo:
    """What an evaluation mode's name says (:func:`mode_info`).

    ``family``: ``main`` (``auto``, ``prompted``, ``prompted_k<k>``: the headline modes),
    ``direction`` (``auto_forward``/``auto_backward``; ``auto`` is both directions) or
    ``robustness`` (``box_jitter<pct>``, ``point_offset<pct>``, ``key_slice<pct>``)."""

    name: str
    family: str
    n_prompts: int
    perturbation: str | None = None   # a key of PERTURBATIONS
    level: float | None = None        # the perturbation's level, a fraction (0.25 for ..25)
    direction: str | None = None      # forward | backward (auto: None, both)


def mode_info(mode: str) -> ModeInfo | None:
    """The one reader of evaluation mode names (evaluate writes them, the report reads
    them); None for a name of none of the families."""
    k = mode_prompts(mode)
    if k is not None:
        return ModeInfo(mode, "main", k)
    if mode in DIRECTION_MODES:
        return ModeInfo(mode, "direction", 0, direction=DIRECTION_MODES[mode])
    for name in PERTURBATIONS:
        pct = mode.removeprefix(name)
        if pct != mode and pct.isdigit() and pct.isascii():
            return ModeInfo(mode, "robustness", 1, perturbation=name, level=int(pct) / 100)
    return None


def robustness_mode(perturbation: str, level: float) -> str:
    """``box_jitter`` at 0.25 -> ``box_jitter25`` (levels are whole percents)."""
    pct = round(float(level) * 100)
    if abs(pct - float(level) * 100) > 1e-6:
        raise UserError(f"evaluate.robustness.{perturbation}: level {level} is not a whole percent (e.g. 0.25)")
    return f"{perturbation}{pct}"
