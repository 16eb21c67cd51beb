"""Secrets on disk and in text, store targets, paths built from event ids, and what a
checkpoint must prove before an agent loads it. Pure logic: no broker, no store."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from pydantic import SecretStr

from atlas.settings import Settings
from consumers.jobs import fresh_run_dir
from runtime.backends.base import BackendError
from runtime.checkpoints import sha256_of, verify
from schemas.models import CheckpointEvent, under
from schemas.secrets import (
    SecretFileError,
    ensure_secret,
    read_secret,
    remember,
    scrub,
    scrub_log_records,
    write_private,
)
from store.client import StoreTarget, StoreUnavailable, redact_url


def test_secret_files_are_private_and_refused_when_others_can_read(tmp_path: Path) -> None:
    path = tmp_path / "home" / "secrets" / "store.password"
    first = ensure_secret(path)
    assert ensure_secret(path).get_secret_value() == first.get_secret_value()
    assert len(first.get_secret_value()) >= 40
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    path.chmod(0o644)
    with pytest.raises(SecretFileError, match=r"readable by others \(mode 644\): `chmod 600"):
        read_secret(path)
    empty = tmp_path / "empty"
    write_private(empty, "\n")
    with pytest.raises(SecretFileError, match="is empty"):
        read_secret(empty)
    with pytest.raises(SecretFileError, match="cannot read"):
        read_secret(tmp_path / "missing")


def test_store_targets_parse_every_part_and_never_print_the_password() -> None:
    target = StoreTarget.parse("https://alice:s3cr%40t-pass@ch.example:9440/analytics")
    assert (target.interface, target.host, target.port, target.database) == (
        "https",
        "ch.example",
        9440,
        "analytics",
    )
    assert target.username == "alice" and target.password is not None
    assert target.password.get_secret_value() == "s3cr@t-pass"
    assert "s3cr" not in str(target) and "s3cr" not in repr(target)
    assert str(target) == "https://alice:***@ch.example:9440/analytics"
    assert StoreTarget.parse("https://ch.example").port == 8443
    assert StoreTarget.parse("http://ch.example").port == 8123
    from_env = StoreTarget.parse(
        "https://bob:in-url@h/db", password=SecretStr("from-env"), ca_cert="/ca.pem", verify=False
    )
    assert from_env.password is not None and from_env.password.get_secret_value() == "from-env"
    assert (from_env.ca_cert, from_env.verify) == ("/ca.pem", False)
    assert redact_url("http://u:p%40ss@h:1/d") == "http://u:***@h:1/d"
    with pytest.raises(StoreUnavailable) as info:
        StoreTarget.parse("ftp://u:topsecret@h")
    assert "topsecret" not in str(info.value)
    with pytest.raises(StoreUnavailable, match="invalid port"):
        StoreTarget.parse("http://h:notaport/db")


def test_remembered_secrets_are_scrubbed_from_text_and_log_records(
    caplog: pytest.LogCaptureFixture,
) -> None:
    remember(SecretStr("hunter2-but-longer"))
    assert scrub("password=hunter2-but-longer;") == "password=***;"
    assert scrub("password=hunter2-but-longer%21") == "password=***%21"
    scrub_log_records()
    with caplog.at_level(logging.INFO):
        logging.getLogger("test").info("connecting with %s", "hunter2-but-longer")
        try:
            raise RuntimeError("server said hunter2-but-longer is wrong")
        except RuntimeError:
            logging.getLogger("test").exception("failed")
    assert "hunter2" not in caplog.text and "***" in caplog.text
    make = logging.getLogRecordFactory()
    bad = make("test", logging.INFO, __file__, 1, "no placeholder", ("extra",), None)
    assert bad.args == ("extra",)  # left for the handler to report, never raised here
    good = make("test", logging.INFO, __file__, 1, "%s!", ("hunter2-but-longer",), None)
    assert (good.getMessage(), good.args) == ("***!", ())


def test_paths_from_event_ids_stay_under_their_root(tmp_path: Path) -> None:
    assert under(tmp_path, "agent-1", "student", "v3") == tmp_path / "agent-1" / "student" / "v3"
    for bad in ("..", "../etc", "a/b", "", ".hidden", "x" * 200, "a\x00b"):
        with pytest.raises(ValueError, match="cannot name a file"):
            under(tmp_path, "agent", bad)
    (tmp_path / "escape").symlink_to("/etc")
    with pytest.raises(ValueError, match="leads outside"):
        under(tmp_path, "escape")


def test_a_job_folder_is_fresh_and_private(tmp_path: Path) -> None:
    root = tmp_path / "jobs"
    planted = root / "gepa-abc" / "gepa_state.bin"
    planted.parent.mkdir(parents=True)
    planted.write_bytes(b"a pickle someone left")
    run_dir = fresh_run_dir(root, "gepa-abc")
    assert list(run_dir.iterdir()) == []
    assert root.stat().st_mode & 0o777 == 0o700 and run_dir.stat().st_mode & 0o777 == 0o700
    with pytest.raises(ValueError):
        fresh_run_dir(root, "../outside")


def _checkpoint(folder: Path, sha256: dict[str, str]) -> CheckpointEvent:
    return CheckpointEvent(
        agent_id="a",
        role="student",
        version=2,
        uri=f"file://{folder}",
        base_model="m",
        sha256=sha256,
        source="grpo",
    )


def test_a_checkpoint_must_hash_every_file_and_carry_safetensors(tmp_path: Path) -> None:
    folder = tmp_path / "v2"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"weights")
    (folder / "config.json").write_text("{}")
    (folder / "card.json").write_text("{}")
    digests = {p.name: sha256_of(p) for p in folder.iterdir() if p.name != "card.json"}
    assert verify(_checkpoint(folder, digests)) == folder
    with pytest.raises(BackendError, match=r"lists no .safetensors"):
        verify(_checkpoint(folder, {}))
    with pytest.raises(BackendError, match=r"config.json .* not hashed"):
        verify(_checkpoint(folder, {"model.safetensors": digests["model.safetensors"]}))
    (folder / "pytorch_model.bin").write_bytes(b"a pickle")
    with pytest.raises(BackendError, match=r"pytorch_model.bin .* not hashed"):
        verify(_checkpoint(folder, digests))
    os.unlink(folder / "pytorch_model.bin")
    (folder / "model.safetensors").write_bytes(b"tampered")
    with pytest.raises(BackendError, match="fails its sha256"):
        verify(_checkpoint(folder, digests))
    with pytest.raises(BackendError, match="bad file name"):
        verify(_checkpoint(folder, {**digests, "../../etc/passwd": "0" * 64}))


def test_outside_the_local_stack_only_learner_acts_use_the_learner_credentials(
    tmp_path: Path,
) -> None:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        home=tmp_path,
        kafka_bootstrap="kafka.example:9093",
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="atlas-operator",
        kafka_sasl_password="operator-secret-1",
        kafka_learner_username="atlas-learner",
        kafka_learner_password="learner-secret-2",
    )
    who = {
        role: settings.kafka_config(role)["sasl.username"] for role in (None, "operator", "agent")
    }
    assert set(who.values()) == {"atlas-operator"}  # its own user for everything else
    learner = settings.kafka_config("learner")
    assert (learner["sasl.username"], learner["sasl.password"]) == (
        "atlas-learner",
        "learner-secret-2",
    )
    assert learner["security.protocol"] == "SASL_SSL"  # the rest of the connection unchanged
    forced = settings.model_copy(update={"kafka_role": "learner"})
    assert forced.kafka_config("operator")["sasl.username"] == "atlas-learner"
    assert "learner-secret-2" not in repr(settings) and "learner-secret-2" not in str(
        settings.model_dump()
    )
    assert scrub("failed with learner-secret-2") == "failed with ***"
    alone = settings.model_copy(update={"kafka_learner_password": None})
    assert alone.kafka_config("learner")["sasl.username"] == "atlas-operator"  # unset: its own
