"""Config checks shared by the model, dataset and trainer groups, each with a one-line ValueError.

A group (or a registry entry: a model family, a dataset kind) declares its keys and their types as a dataclass;
merging the config into it rejects a wrong type, an unknown key or a missing one before any work is done.
"""

from __future__ import annotations

from collections.abc import Collection

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


def typed(schema: type, node: DictConfig, group: str) -> DictConfig:
    """``node`` (interpolations resolved) merged into ``schema``; ``group`` prefixes the keys in messages."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.to_container(node, resolve=True))
    except OmegaConfBaseException as error:
        raise ValueError(f"{group}.{error.full_key}: {str(error).splitlines()[0]}") from None
    missing = sorted(OmegaConf.missing_keys(merged))
    if missing:
        raise ValueError(f"{group} lacks {', '.join(f'{group}.{key}' for key in missing)} ({schema.__name__})")
    return merged


def check_choice(key: str, value: object, valid: Collection) -> None:
    if value not in valid:
        raise ValueError(f"{key}={value!r} is not valid; valid: {', '.join(map(str, valid))}")


def check_range(key: str, value: float, low: float, high: float | None = None) -> None:
    """``low <= value`` (and ``value <= high`` when given)."""
    if value < low or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"between {low} and {high}"
        raise ValueError(f"{key}={value} must be {bounds}")
