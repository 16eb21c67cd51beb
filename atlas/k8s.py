"""Generates the parts of the Kubernetes manifests (deploy/k8s/base/generated/) that restate
what the project already defines elsewhere, so that they cannot drift from it:

* one Strimzi ``KafkaTopic`` per contract topic, with the partitions and topic configs of
  configs/topics.yaml (replicas come from the cluster, not from the local stack's table);
* one Strimzi ``KafkaUser`` per role, with the ACLs of the secure local stack
  (deploy/local/roles.py, the one source both use);
* KEDA ``ScaledObject``s for the consumer-group workers, scaled on consumer lag with at most
  as many replicas as their busiest input topic has partitions (more would sit idle);
* ConfigMaps holding configs/ (the GPU learner gets grpo.yaml with the GPU DeepSpeed config).

Run ``python -m atlas.k8s`` after changing any of those sources; a test fails while the
committed files differ from a fresh generation.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from atlas.settings import PROJECT_CONFIGS, TopicSpec, topic_specs
from atlas.workers import REWARDS_GROUP, SINK_GROUP
from deploy.local.roles import ROLES, SINK_TOPICS, Role
from schemas.topics import FEEDBACK, INTERACTIONS

K8S_DIR = Path(__file__).resolve().parent.parent / "deploy" / "k8s"
GENERATED_DIR = K8S_DIR / "base" / "generated"
KAFKA_CLUSTER = "atlas"  # the Strimzi Kafka resource's name (deploy/k8s/base/kafka.yaml)
# Production replication; the dev overlay patches every KafkaTopic down to 1.
TOPIC_REPLICAS = 3
CONFIG_MOUNT = "/etc/atlas/configs"
GPU_DEEPSPEED = "deepspeed/zero3_offload.json"  # what configs/grpo.yaml names for GPUs
LAG_THRESHOLD = "500"  # events behind per replica before KEDA adds one
LABELS = {"app.kubernetes.io/part-of": "atlas-stream"}


def user_name(role: str) -> str:
    """The KafkaUser (and so the SCRAM principal and the Secret Strimzi makes) of ``role``."""
    return f"atlas-{role}"


def kafka_topic(name: str, spec: TopicSpec) -> dict[str, Any]:
    return {
        "apiVersion": "kafka.strimzi.io/v1beta2",
        "kind": "KafkaTopic",
        "metadata": {
            "name": name,
            "labels": {"strimzi.io/cluster": KAFKA_CLUSTER, **LABELS},
        },
        "spec": {
            "topicName": name,
            "partitions": spec.partitions,
            "replicas": TOPIC_REPLICAS,
            "config": dict(spec.config),
        },
    }


def _acl(kind: str, name: str, operations: list[str], prefixed: bool = False) -> dict[str, Any]:
    return {
        "type": "allow",
        "resource": {
            "type": kind,
            "name": name,
            "patternType": "prefix" if prefixed else "literal",
        },
        "operations": operations,
    }


def role_acls(role: Role) -> list[dict[str, Any]]:
    """The ACLs of deploy/local/roles.acl_bindings, in Strimzi's form (one rule per resource)."""
    topic_operations: dict[str, list[str]] = {}
    for topic in role.writes:
        topic_operations.setdefault(topic, []).extend(["Write", "Describe"])
    for topic in role.reads:
        topic_operations.setdefault(topic, []).append("Read")
    for topic in role.describe_configs:
        topic_operations.setdefault(topic, []).append("DescribeConfigs")
    acls = [
        _acl("topic", topic, sorted(set(operations)))
        for topic, operations in sorted(topic_operations.items())
    ]
    acls += [_acl("topic", p, ["All"], prefixed=True) for p in role.owned_topic_prefixes]
    acls += [_acl("group", p, ["Read"], prefixed=True) for p in role.group_prefixes]
    acls += [
        _acl("transactionalId", p, ["Describe", "Write"], prefixed=True)
        for p in role.transactional_prefixes
    ]
    return acls


def kafka_user(role_name: str, role: Role) -> dict[str, Any]:
    return {
        "apiVersion": "kafka.strimzi.io/v1beta2",
        "kind": "KafkaUser",
        "metadata": {
            "name": user_name(role_name),
            "labels": {"strimzi.io/cluster": KAFKA_CLUSTER, **LABELS},
        },
        "spec": {
            "authentication": {"type": "scram-sha-512"},
            "authorization": {"type": "simple", "acls": role_acls(role)},
        },
    }


def scaled_object(
    workload: str, group: str, topics: Iterable[str], specs: dict[str, TopicSpec]
) -> dict[str, Any]:
    """Scale ``workload`` on its group's lag over ``topics``: one replica per partition at most."""
    topics = list(topics)
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": workload, "labels": dict(LABELS)},
        "spec": {
            "scaleTargetRef": {"name": workload},
            "minReplicaCount": 1,
            "maxReplicaCount": max(specs[topic].partitions for topic in topics),
            "pollingInterval": 15,
            "cooldownPeriod": 300,
            "triggers": [
                {
                    "type": "kafka",
                    "authenticationRef": {"name": f"{workload}-kafka"},
                    "metadata": {
                        "bootstrapServers": f"{KAFKA_CLUSTER}-kafka-bootstrap:9093",
                        "consumerGroup": group,
                        "topic": topic,
                        "lagThreshold": LAG_THRESHOLD,
                        "offsetResetPolicy": "earliest",
                        "sasl": "scram_sha512",
                        "tls": "enable",
                    },
                }
                for topic in topics
            ],
        },
    }


def trigger_authentication(workload: str, role: str) -> dict[str, Any]:
    """KEDA reads the worker's own Kafka credentials: the Secret Strimzi made for its user."""
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "TriggerAuthentication",
        "metadata": {"name": f"{workload}-kafka", "labels": dict(LABELS)},
        "spec": {
            "env": [
                {"parameter": "username", "name": "ATLAS_KAFKA_SASL_USERNAME"},
            ],
            "secretTargetRef": [
                {"parameter": "password", "name": user_name(role), "key": "password"},
                {"parameter": "ca", "name": f"{KAFKA_CLUSTER}-cluster-ca-cert", "key": "ca.crt"},
            ],
        },
    }


# The consumer-group workers KEDA scales: workload -> (group, its input topics, Kafka role).
SCALED_WORKERS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "atlas-rewards": (REWARDS_GROUP, (INTERACTIONS, FEEDBACK), "rewards"),
    "atlas-sink": (SINK_GROUP, SINK_TOPICS, "sink"),
}


def config_maps(config_dir: Path) -> list[dict[str, Any]]:
    """configs/ as ConfigMaps: the YAML files, the DeepSpeed JSONs (a ConfigMap key cannot
    hold a folder; the pods project them back under deepspeed/), and grpo.yaml twice: as it
    is, and for GPU learners with the DeepSpeed config its own comment names for GPUs."""
    yaml_files = {p.name: p.read_text() for p in sorted(config_dir.glob("*.yaml"))}
    grpo = yaml_files.pop("grpo.yaml")
    deepspeed = {p.name: p.read_text() for p in sorted((config_dir / "deepspeed").glob("*.json"))}

    def config_map(name: str, data: dict[str, str]) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name, "labels": dict(LABELS)},
            "data": data,
        }

    return [
        config_map("atlas-configs", yaml_files),
        config_map("atlas-deepspeed", deepspeed),
        config_map("atlas-grpo-cpu", {"grpo.yaml": grpo}),
        config_map("atlas-grpo-gpu", {"grpo.yaml": gpu_grpo_config(grpo)}),
    ]


def gpu_grpo_config(grpo: str) -> str:
    """configs/grpo.yaml with ``deepspeed_config`` pointing at the GPU DeepSpeed config."""
    lines = grpo.splitlines(keepends=True)
    matches = [i for i, line in enumerate(lines) if line.startswith("deepspeed_config:")]
    if len(matches) != 1:
        raise ValueError("configs/grpo.yaml must set deepspeed_config on exactly one line")
    lines[matches[0]] = f"deepspeed_config: {GPU_DEEPSPEED}   # generated by atlas.k8s for GPUs\n"
    return "".join(lines)


def generate(config_dir: Path = PROJECT_CONFIGS) -> dict[str, str]:
    """File name -> YAML text of every generated manifest."""
    specs = topic_specs(config_dir)
    scaling: list[dict[str, Any]] = []
    for workload, (group, topics, role) in SCALED_WORKERS.items():
        scaling += [scaled_object(workload, group, topics, specs)]
        scaling += [trigger_authentication(workload, role)]
    documents = {
        "topics.yaml": [kafka_topic(name, spec) for name, spec in specs.items()],
        "users.yaml": [kafka_user(name, role) for name, role in ROLES.items()],
        "scaling.yaml": scaling,
        "configs.yaml": config_maps(config_dir),
    }
    header = "# Generated by `python -m atlas.k8s` from configs/ and deploy/local/roles.py.\n"
    return {
        name: header + yaml.safe_dump_all(docs, sort_keys=False, width=100)
        for name, docs in documents.items()
    }


def write(target: Path = GENERATED_DIR) -> list[Path]:
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in generate().items():
        path = target / name
        path.write_text(text)
        written.append(path)
    return written


if __name__ == "__main__":
    for path in write():
        print(path.relative_to(K8S_DIR.parent.parent), file=sys.stdout)
