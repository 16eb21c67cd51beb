"""Shared fixtures: one real local stack (Kafka + store) per test session, started by the
same code as `atlas up` and stopped by PID at the end."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from clickhouse_connect.driver.client import Client

from atlas import stack
from atlas.settings import Settings
from store.client import StoreTarget, connect
from store.migrations import migrate


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
def store_target(stack_settings: Settings) -> StoreTarget:
    return stack_settings.store()


@pytest.fixture
def schema_dir_copy(tmp_path: Path) -> Path:
    """A writable copy of the contract files, for tests that break or evolve them."""
    import shutil

    from schemas.codec import SCHEMA_DIR

    target = tmp_path / "avro"
    shutil.copytree(SCHEMA_DIR, target)
    return target


@pytest.fixture(scope="session")
def model_dir() -> Path:
    """SmolLM2-135M-Instruct as safetensors (converted from the wheel's GGUF once, cached)."""
    from runtime.backends.local import default_model_dir

    return default_model_dir(Settings().cache_dir)


@pytest.fixture(scope="session")
def local_backend(model_dir: Path):  # type: ignore[no-untyped-def]
    from runtime.backends.local import LocalBackend

    return LocalBackend(model_dir, model_name="SmolLM2-135M-Instruct", max_batch=8)


LLAMA_API_KEY = "atlas-test-key"


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """llama.cpp's OpenAI-compatible server on the same GGUF, requiring an API key."""
    from deploy.local.llama_server import start_llama_server
    from runtime.backends.local import smollm2_gguf

    log = tmp_path_factory.mktemp("llama") / "server.log"
    server = start_llama_server(smollm2_gguf(), log, api_key=LLAMA_API_KEY)
    try:
        yield server
    finally:
        server.stop()


# Fixtures that bring up a real service, and the marker a test that uses one gets, so the fast
# tests run alone with `-m "not integration and not slow"`. Tests that start services of their
# own say so with a module-level `pytestmark`.
REAL_SERVICES = {
    "stack_settings": "integration",
    "kafka_config": "integration",
    "store_target": "integration",
    "llama_server": "slow",
    "model_dir": "slow",
    "local_backend": "slow",
    "avro_jars": "slow",  # Apache Avro's Java library, a JVM per call
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for marker in {
            REAL_SERVICES[f] for f in getattr(item, "fixturenames", ()) if f in REAL_SERVICES
        }:
            item.add_marker(marker)


@pytest.fixture(params=["chdb", pytest.param("http", marks=pytest.mark.integration)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Client]:
    """An empty, migrated store in both modes, same code: embedded chdb in this process, and
    ClickHouse HTTP served by the local store process (in a database of its own)."""
    if request.param == "chdb":
        client = connect(f"chdb://{tmp_path / 'chdb'}")
    else:
        base = request.getfixturevalue("store_target")
        database = f"test_{uuid.uuid4().hex[:8]}"
        connect(base).command(f"CREATE DATABASE {database}")
        client = connect(base.with_database(database))
    migrate(client)
    yield client
    client.close()
