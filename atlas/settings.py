"""Settings for every process, from ``ATLAS_*`` environment variables (or a ``.env`` file).

Unset connection settings fall back to the local stack that ``atlas up`` started.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from deploy.local.processes import StackError
from deploy.local.roles import password_file
from schemas.codec import AvroCodec
from schemas.configfile import read_yaml
from schemas.limits import EventLimits
from schemas.secrets import read_secret, remember
from schemas.signing import Signer, Verifier, load_signer, load_verifier
from store.client import StoreTarget
from store.ddl import CLUSTER_NAME

PROJECT_CONFIGS = Path(__file__).resolve().parent.parent / "configs"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ATLAS_", env_file=".env", extra="ignore")

    home: Path = Field(
        default=Path.home() / ".atlas",
        description="Local stack state, data and logs (ATLAS_HOME).",
    )
    cache_dir: Path = Field(
        default=Path.home() / ".cache" / "atlas-stream",
        description="Downloads reused across runs: Kafka jars, converted models.",
    )
    config_dir: Path = Field(default=PROJECT_CONFIGS, description="Folder of the YAML configs.")
    kafka_bootstrap: str | None = Field(
        default=None, description="Your own cluster's bootstrap servers; unset = the local stack."
    )
    kafka_security_protocol: str | None = Field(default=None, description="e.g. SASL_SSL")
    kafka_sasl_mechanism: str | None = Field(default=None, description="e.g. SCRAM-SHA-512")
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_ca_location: str | None = None
    kafka_learner_username: str | None = Field(
        default=None,
        description="Outside the local stack: the learner's SASL user, for a process whose own "
        "user (ATLAS_KAFKA_SASL_*) may not do a learner's acts (publish a prompt or checkpoint "
        "version, remove a label): the console's rollback and label buttons, `atlas prompts "
        "rollback`; unset = ATLAS_KAFKA_SASL_* for those acts too.",
    )
    kafka_learner_password: SecretStr | None = None
    kafka_role: str | None = Field(
        default=None,
        description="On the local --secure stack: whose Kafka credentials this process uses "
        "(agent, rewards, sink, learner, operator, admin); unset = the command's own role.",
    )
    schema_registry_url: str | None = Field(
        default=None, description="Confluent-compatible registry; unset = fingerprinted Avro."
    )
    student_backend: Literal["local", "openai"] = Field(
        default="local", description="local = in-process transformers; openai = an endpoint."
    )
    student_model: str | None = Field(
        default=None,
        description="local: a model folder (default SmolLM2-135M-Instruct); openai: a model name.",
    )
    teacher_backend: Literal["local", "openai"] = "local"
    teacher_model: str | None = None
    judge_backend: Literal["local", "openai"] = Field(
        default="local", description="The LLM judges' model (only used when one is enabled)."
    )
    judge_model: str | None = None
    arbiter_backend: Literal["local", "openai"] | None = Field(
        default=None, description="A stronger model that settles escalated judgements."
    )
    arbiter_model: str | None = None
    reflection_backend: Literal["local", "openai", "none"] = Field(
        default="local",
        description="The model GEPA reflects with to rewrite prompts; none = demonstrations only.",
    )
    reflection_model: str | None = None
    checkpoint_dir: Path | None = Field(
        default=None,
        description="Where published checkpoints live; unset = $ATLAS_HOME/checkpoints.",
    )
    worker_id: str | None = Field(
        default=None,
        description="Names this worker in job reports; unset = <host>-<kind>-<n>, the lowest "
        "slot free on this host, so a restarted worker gets its old id back.",
    )
    openai_base_url: str | None = Field(
        default=None, description="OpenAI-compatible endpoint (vLLM, llama.cpp); unset = OpenAI."
    )
    openai_api_key: SecretStr | None = None
    signing_key: SecretStr | None = Field(
        default=None,
        description="The learner's ed25519 key (base64 of 32 bytes) that signs prompt versions "
        "and checkpoints; unset = $ATLAS_HOME/secrets/signing.key if present.",
    )
    signing_public_key: str | None = Field(
        default=None,
        description="The key agents check prompt versions and checkpoints against; unset = "
        "$ATLAS_HOME/secrets/signing.pub if present, else nothing is checked.",
    )
    local_max_batch: int = Field(default=8, ge=1, description="Prompts per local generate call.")
    clickhouse_url: str | None = Field(
        default=None,
        description="https://user@host:8443/db (http: port 8123) or chdb:///path; unset = the "
        "local store.",
    )
    clickhouse_password: SecretStr | None = Field(
        default=None, description="The ClickHouse password; wins over one in the URL."
    )
    clickhouse_ca: str | None = Field(
        default=None, description="CA bundle that signed the server's certificate (https)."
    )
    clickhouse_verify: bool = Field(
        default=True, description="Verify the server's certificate (https); never off in prod."
    )
    clickhouse_cluster: str | None = Field(
        default=None,
        pattern=f"^{CLUSTER_NAME.pattern}$",
        description="A ClickHouse cluster (remote_servers) name: migrations run ON CLUSTER with "
        "replicated tables and Distributed tables under the usual names; unset = one server.",
    )
    console_port: int = Field(
        default=8770, ge=1, le=65535, description="The web console's port on 127.0.0.1."
    )
    console_password: SecretStr | None = Field(
        default=None,
        description="The web console's password (user atlas); unset = "
        "$ATLAS_HOME/secrets/console.password, made on first use.",
    )
    max_field_bytes: int = Field(
        default=EventLimits().max_field_bytes,
        ge=1024,
        description="Largest text field of an event; bigger events are refused/dead-lettered.",
    )
    max_message_bytes: int = Field(
        default=EventLimits().max_message_bytes,
        ge=4096,
        description="Largest encoded event; keep it under the topics' max.message.bytes.",
    )
    feedback_window_s: float = Field(
        default=7 * 86_400.0,
        gt=0,
        description="The reward worker keeps a trace's state this long after its last change.",
    )
    pending_feedback_ttl_s: float = Field(
        default=3600.0,
        gt=0,
        description="Feedback waits this long for its interaction, then is dead-lettered.",
    )
    rewards_batch_size: int = Field(
        default=500,
        ge=1,
        description="Most events the reward worker handles in one transaction (interactions "
        "are judged together); with model judges, one batch must be judged within 10 minutes.",
    )
    rewards_linger_s: float = Field(
        default=0.05,
        gt=0,
        description="Interactions are judged every rewards_linger_s or as soon as "
        "rewards_batch_size have arrived: the most latency batching adds at low rates.",
    )
    sink_batch_size: int = Field(
        default=5000, ge=1, description="Most events the sink inserts in one call."
    )
    sink_linger_s: float = Field(
        default=0.005,
        gt=0,
        description="How long a sink batch waits to fill after its first event: the latency "
        "it adds at low rates; raise it to make fewer, larger inserts. Under load batches "
        "fill while the previous insert runs, so a short linger costs no throughput (at "
        "1,000 events/s, p99 event->stored was ~200 ms at 0.005 s, 243-267 ms at 0.02 s).",
    )
    metrics_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="Port on which each long-running worker (and the proxy) serves Prometheus "
        "metrics at /metrics; 0 = none. One port per process: give each worker on a host its own.",
    )
    metrics_host: str = Field(
        default="127.0.0.1",
        description="Address the metrics are served on; 0.0.0.0 in a pod that Prometheus scrapes.",
    )

    def model_post_init(self, context: Any, /) -> None:
        """Every secret setting is known to the scrubber of logs and job messages."""
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                remember(value)

    def limits(self) -> EventLimits:
        return EventLimits(
            max_field_bytes=self.max_field_bytes, max_message_bytes=self.max_message_bytes
        )

    def codec(self) -> AvroCodec:
        """The codec every process of this deployment uses: its registry and size limits."""
        return AvroCodec(registry_url=self.schema_registry_url, limits=self.limits())

    @property
    def secrets_dir(self) -> Path:
        return self.home / "secrets"

    def signer(self) -> Signer | None:
        return load_signer(self.signing_key, self.secrets_dir)

    def verifier(self) -> Verifier | None:
        return load_verifier(self.signing_public_key, self.secrets_dir)

    @property
    def state_file(self) -> Path:
        return self.home / "stack.json"

    def local_stack(self) -> dict[str, Any]:
        import json

        if not self.state_file.exists():
            return {}
        try:
            state = json.loads(self.state_file.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise StackError(
                f"{self.state_file} is unreadable ({exc}); if nothing runs, delete it and run"
                " `atlas up` (it records the stack's PIDs and addresses)"
            ) from None
        if not isinstance(state, dict):
            raise StackError(f"{self.state_file} is not a stack record; delete it and `atlas up`")
        return state

    def bootstrap(self) -> str:
        if self.kafka_bootstrap:
            return self.kafka_bootstrap
        kafka = self.local_stack().get("kafka")
        if not kafka:
            raise StackError("no Kafka configured: run `atlas up` or set ATLAS_KAFKA_BOOTSTRAP")
        return str(kafka["bootstrap"])

    def kafka_config(self, role: str | None = None) -> dict[str, str]:
        """librdkafka configuration for confluent-kafka clients; on the local --secure stack,
        with the credentials of ``role`` (ATLAS_KAFKA_ROLE, else ``role``, else operator)."""
        config = {"bootstrap.servers": self.bootstrap()}
        kafka = {} if self.kafka_bootstrap else self.local_stack().get("kafka") or {}
        if kafka.get("secure"):
            who = self.kafka_role or role or "operator"
            try:
                secret = read_secret(password_file(self.secrets_dir, who))
            except ValueError as exc:  # an unknown role
                raise StackError(str(exc)) from None
            remember(secret)
            config.update(
                {
                    "security.protocol": "SASL_SSL",
                    "sasl.mechanism": "SCRAM-SHA-512",
                    "sasl.username": who,
                    "sasl.password": secret.get_secret_value(),
                    "ssl.ca.location": str(kafka["ca_cert"]),
                }
            )
        optional = {
            "security.protocol": self.kafka_security_protocol,
            "sasl.mechanism": self.kafka_sasl_mechanism,
            "sasl.username": self.kafka_sasl_username,
            "sasl.password": (
                self.kafka_sasl_password.get_secret_value() if self.kafka_sasl_password else None
            ),
            "ssl.ca.location": self.kafka_ssl_ca_location,
        }
        config.update({k: v for k, v in optional.items() if v})
        learner = self.kafka_learner_username and self.kafka_learner_password
        if learner and self.kafka_bootstrap and (self.kafka_role or role) == "learner":
            config["sasl.username"] = self.kafka_learner_username  # type: ignore[assignment]
            config["sasl.password"] = self.kafka_learner_password.get_secret_value()  # type: ignore[union-attr]
        return config

    def store(self) -> StoreTarget:
        """Where the store is, with its credentials: ATLAS_CLICKHOUSE_* or the local stack's."""
        if self.clickhouse_url:
            target = StoreTarget.parse(
                self.clickhouse_url,
                password=self.clickhouse_password,
                ca_cert=self.clickhouse_ca,
                verify=self.clickhouse_verify,
            )
            remember(target.password)  # it may have come from the URL
            return target
        store = self.local_stack().get("store")
        if not store:
            raise StackError("no ClickHouse configured: run `atlas up` or set ATLAS_CLICKHOUSE_URL")
        secret_file = store.get("password_file")
        if not secret_file:
            raise StackError(
                f"{self.state_file} records a store without a password (made by an older "
                "version): `atlas down` then `atlas up`"
            )
        password = read_secret(Path(secret_file))
        remember(password)
        ca_cert = str(store.get("ca_cert") or "") or None
        return StoreTarget.parse(str(store["url"]), password=password, ca_cert=ca_cert)


class TopicSpec(BaseModel):
    partitions: int = Field(ge=1)
    replication_factor: int = Field(ge=1)
    config: dict[str, str]


def topic_specs(config_dir: Path) -> dict[str, TopicSpec]:
    """configs/topics.yaml merged over its defaults, one spec per contract topic."""
    from schemas.topics import TOPICS

    path = config_dir / "topics.yaml"
    raw = read_yaml(path)
    defaults = raw.get("defaults", {})
    listed = raw.get("topics", {}) or {}
    unknown = sorted(set(listed) - set(TOPICS))
    if unknown:
        raise StackError(f"{path}: unknown topics {', '.join(unknown)}")
    specs = {}
    for name in TOPICS:
        own = listed.get(name) or {}
        specs[name] = TopicSpec(
            partitions=own.get("partitions", defaults.get("partitions", 1)),
            replication_factor=own.get("replication_factor", defaults.get("replication_factor", 1)),
            config={
                k: str(v)
                for k, v in {**defaults.get("config", {}), **own.get("config", {})}.items()
            },
        )
    return specs
