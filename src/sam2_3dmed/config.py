"""Configuration: built-in defaults, deep-merged user YAML, JSON-schema validation.

Errors name the file and the dotted key, e.g.
``config/demo.yaml: targets.spleen.hu_windw: unknown key``.
"""

from __future__ import annotations

import copy
import json
import math
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

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
    bad_fold = [f for f in cfg["run"]["folds"] if f >= cfg["splits"]["folds"]]
    if bad_fold:
        raise ConfigError(f"run.folds: fold {bad_fold[0]} does not exist (splits.folds is {cfg['splits']['folds']})", source)
    for name, tgt in cfg["targets"].items():
        lo, hi = tgt["hu_window"]
        if not lo < hi:
            raise ConfigError(f"targets.{name}.hu_window: lower bound must be below upper bound", source)
    return cfg


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> dict:
    """Defaults, then the YAML file at ``path`` (if any), then ``overrides``; validated."""
    cfg = defaults()
    source = "built-in defaults"
    if path is not None:
        p = Path(path)
        source = str(p)
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
    return validate(cfg, source)


def variant_config(cfg: dict, variant: str) -> dict:
    """The config with the named variant's model/train overrides applied, validated."""
    if variant not in cfg["variants"]:
        raise UserError(f"unknown variant {variant!r}; defined variants: {', '.join(sorted(cfg['variants']))}")
    out = deep_merge(cfg, cfg["variants"][variant])
    validate(out, f"variants.{variant}")
    m = out["model"]
    if m["arch"] == "unet3d" and m["pretrained"]:
        raise ConfigError("model.pretrained: the unet3d architecture has no pretrained weights; set it to false",
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
