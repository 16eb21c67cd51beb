"""Apache Avro's Java library as a test oracle: fetch its jars with Maven (once, into the
cache) and run ``AvroInterop.java`` with Java's single-file source launcher."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from deploy.local.kafka import require_tool
from deploy.local.processes import StackError
from schemas.codec import SchemaCatalog
from schemas.models import Event

AVRO_POM = Path(__file__).with_name("avro-pom.xml")
INTEROP = Path(__file__).with_name("AvroInterop.java")
JAVA_TIMEOUT_S = 120
JDK_HINT = "apt-get install -y openjdk-17-jdk-headless (Java 11+ runs a .java file directly)"
Messages = list[tuple[type[Event], bytes]]


def avro_version() -> str:
    text = AVRO_POM.read_text()
    return text.split("<avro.version>")[1].split("</avro.version>")[0]


def fetch_avro_jars(cache_dir: Path) -> Path:
    """Copy Apache Avro's jars from Maven Central into ``<cache_dir>/avro-java`` (once, as
    ``deploy.local.kafka.fetch_jars`` does for Kafka) and return the folder."""
    libs = cache_dir / "avro-java"
    marker = libs / ".complete"
    if marker.exists() and marker.read_text() == avro_version():
        return libs
    mvn = require_tool("mvn", "apt-get install -y maven")
    staging = libs.with_name("avro-java.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    options = [f"-DoutputDirectory={staging}", "-DincludeScope=runtime"]
    result = subprocess.run(
        [mvn, "-q", "-B", "-f", str(AVRO_POM), "dependency:copy-dependencies", *options],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    if result.returncode != 0:
        detail = (result.stdout + result.stderr).strip().splitlines()[-5:]
        raise StackError("fetching Avro's jars with Maven failed: " + " | ".join(detail))
    (staging / ".complete").write_text(avro_version())
    shutil.rmtree(libs, ignore_errors=True)
    staging.rename(libs)
    return libs


def java(jars: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    """AvroInterop.java run by Java's single-file source launcher, within JAVA_TIMEOUT_S."""
    command = [require_tool("java", JDK_HINT), "-cp", f"{jars}/*", str(INTEROP), *map(str, args)]
    try:
        return subprocess.run(
            command, capture_output=True, text=True, timeout=JAVA_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"AvroInterop.java {args[0]} took over {JAVA_TIMEOUT_S}s")


def run_java(jars: Path, *args: str | Path) -> str:
    """AvroInterop.java's stdout; the test fails with its stderr if it does not exit 0."""
    result = java(jars, *args)
    if result.returncode != 0:
        pytest.fail(f"AvroInterop.java {args[0]} exited {result.returncode}:\n{result.stderr}")
    return result.stdout


def schema_file(folder: Path, event_type: type[Event]) -> Path:
    """The contract's standalone schema (as our codec fingerprints it), written to a file."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{event_type.schema_name}.avsc"
    path.write_text(SchemaCatalog.load().schema_json(event_type.schema_name))
    return path


def decode_args(folder: Path, messages: Messages) -> list[Path]:
    """Arguments of ``decode``: each message file preceded by its contract's schema."""
    args: list[Path] = []
    for i, (event_type, data) in enumerate(messages):
        args += [schema_file(folder, event_type), folder / f"{i}.bin"]
        args[-1].write_bytes(data)
    return args


def java_decode(jars: Path, folder: Path, messages: Messages) -> list[dict[str, Any]]:
    """Java's decoding of each message (as its contract type), in Avro's JSON encoding."""
    lines = run_java(jars, "decode", *decode_args(folder, messages)).splitlines()
    assert len(lines) == len(messages)
    return [json.loads(line) for line in lines]


def java_encode(
    jars: Path, folder: Path, groups: list[tuple[type[Event], list[Any]]]
) -> list[list[bytes]]:
    """Java's single-object encoding of each group's datums, given in Avro's JSON encoding."""
    args: list[Path] = []
    for n, (event_type, datums) in enumerate(groups):
        group = folder / str(n)
        (group / "out").mkdir(parents=True)
        (group / "datums.jsonl").write_text("".join(json.dumps(d) + "\n" for d in datums))
        args += [schema_file(group, event_type), group / "datums.jsonl", group / "out"]
    run_java(jars, "encode", *args)
    return [
        [(folder / str(n) / "out" / f"{i}.bin").read_bytes() for i in range(len(datums))]
        for n, (_, datums) in enumerate(groups)
    ]
