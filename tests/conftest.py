"""Shared fixtures: one real local stack (Kafka + store) per test session, started by the
same code as `atlas up` and stopped by PID at the end."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from atlas import stack
from atlas.settings import Settings


@pytest.fixture(scope="session")
def stack_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    settings = Settings(home=tmp_path_factory.mktemp("atlas-home"))
    stack.up(settings)
    try:
        yield settings
    finally:
        stack.down(settings)


@pytest.fixture(scope="session")
def kafka_config(stack_settings: Settings) -> dict[str, str]:
    return stack_settings.kafka_config()


@pytest.fixture(scope="session")
def store_url(stack_settings: Settings) -> str:
    return stack_settings.store_url()


@pytest.fixture
def schema_dir_copy(tmp_path: Path) -> Path:
    """A writable copy of the contract files, for tests that break or evolve them."""
    import shutil

    from schemas.codec import SCHEMA_DIR

    target = tmp_path / "avro"
    shutil.copytree(SCHEMA_DIR, target)
    return target
