"""A trigger's params applied to a job's config: ``name`` or ``section.name`` = value, validated
by the config's own model, so a typo or a bad value fails before any work starts."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

from pydantic import BaseModel

Config = TypeVar("Config", bound=BaseModel)


def with_params(
    config: Config, params: Mapping[str, str], kind: str, budget_field: str, budget: int | None
) -> Config:
    values = config.model_dump()
    for name, value in params.items():
        *sections, leaf = name.split(".")
        target = values
        for section in sections:
            target = target.get(section) if isinstance(target, dict) else None
        if not isinstance(target, dict) or leaf not in target or isinstance(target[leaf], dict):
            raise ValueError(f"unknown {kind} setting {name!r} in the trigger's params")
        target[leaf] = value
    if budget is not None:
        values[budget_field] = budget
    return type(config).model_validate(values)
