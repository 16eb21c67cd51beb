"""Reading the YAML configs (``configs/*.yaml``) into their pydantic models, with errors a person
can act on: one line that names the file, the line or the setting, and what is wrong.

It lives beside the contracts because every layer loads a config and schemas is the one layer
every other may import.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


class ConfigError(Exception):
    """A config file that is missing, unreadable, not YAML or not valid; one line."""


def read_yaml(path: Path) -> dict[str, Any]:
    """The YAML mapping in ``path`` ({} for an empty file)."""
    if not path.is_file():
        raise ConfigError(
            f"{path}: no such config file; ATLAS_CONFIG_DIR must name a folder holding"
            f" {path.name} (the project's configs/ has one to copy)"
        )
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}{where}: not valid YAML: {problem}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read: {exc}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{path}: expected a mapping of settings (name: value), found {type(raw).__name__}"
        )
    return raw


def validation_summary(exc: ValidationError) -> str:
    """The first problem of a pydantic error as 'where: what', and how many more there are."""
    errors = exc.errors()
    first = errors[0]
    where = ".".join(map(str, first["loc"])) or "(top level)"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {first['msg']}{more}"


def load_config(path: Path, model: type[M]) -> M:
    """``path`` validated as ``model``; ConfigError with the first problem otherwise."""
    try:
        return model.model_validate(read_yaml(path))
    except ValidationError as exc:
        raise ConfigError(f"{path}: {validation_summary(exc)}") from None
