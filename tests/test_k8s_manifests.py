"""deploy/k8s: the generated manifests are fresh, the ACLs are the secure stack's, and every
object of each rendered overlay passes kubernetes-validate or its operator's CRD schema.
No broker needed: these render with kustomize and validate offline."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from atlas.cli import app
from atlas.k8s import GENERATED_DIR, generate, gpu_grpo_config, user_name
from atlas.settings import PROJECT_CONFIGS, topic_specs
from deploy.local.roles import ROLES, acl_bindings
from tests.k8s_schemas import kustomize_command, render, validate

OVERLAYS = ("dev", "production")
WORKLOADS = ("Deployment", "StatefulSet")

pytestmark = pytest.mark.skipif(
    kustomize_command() is None, reason="needs kubectl or kustomize (deploy/setup.sh)"
)


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {overlay: render(overlay) for overlay in OVERLAYS}


def objects(docs: list[dict], *kinds: str) -> list[dict]:
    return [doc for doc in docs if doc["kind"] in kinds]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_of_the_overlay_validates(rendered, overlay: str) -> None:
    report = validate(rendered[overlay])
    print(report.summary(overlay))
    assert not report.errors, "\n".join(report.errors)
    assert report.crd["KafkaTopic"] == len(topic_specs(PROJECT_CONFIGS))
    assert report.crd["KafkaUser"] == len(ROLES)


def test_the_validator_rejects_broken_objects(rendered) -> None:
    """Wrong types, unknown fields and bad enums in core and operator kinds are all caught."""
    docs = rendered["production"]
    topic = copy.deepcopy(objects(docs, "KafkaTopic")[0])
    topic["spec"]["partitions"] = "six"
    scaled = copy.deepcopy(objects(docs, "ScaledObject")[0])
    scaled["spec"]["maxReplicas"] = 6  # the field is maxReplicaCount
    user = copy.deepcopy(objects(docs, "KafkaUser")[0])
    user["spec"]["authorization"]["acls"][0]["operations"] = ["Publish"]
    installation = copy.deepcopy(objects(docs, "ClickHouseInstallation")[0])
    installation["spec"]["configuration"]["clusters"][0]["name"] = "a name with spaces"
    deployment = copy.deepcopy(objects(docs, "Deployment")[0])
    deployment["spec"]["replicas"] = "one"
    unknown = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    broken = [topic, scaled, user, installation, deployment, unknown]
    report = validate(broken)
    named = {error.split(":")[0] for error in report.errors}
    assert named == {f"{d['kind']}/{d['metadata']['name']}" for d in broken}, report.errors


def test_the_generated_manifests_are_a_fresh_generation() -> None:
    on_disk = {path.name: path.read_text() for path in GENERATED_DIR.glob("*.yaml")}
    assert on_disk == generate(), "deploy/k8s/base/generated is stale: run python -m atlas.k8s"


def test_topics_follow_the_topic_table(rendered) -> None:
    specs = topic_specs(PROJECT_CONFIGS)
    for overlay, replicas in (("production", 3), ("dev", 1)):
        topics = {
            t["spec"]["topicName"]: t["spec"] for t in objects(rendered[overlay], "KafkaTopic")
        }
        assert set(topics) == set(specs)
        for name, spec in specs.items():
            assert topics[name]["partitions"] == spec.partitions
            assert topics[name]["config"] == spec.config
            assert topics[name]["replicas"] == replicas


def test_kafka_users_carry_the_secure_stacks_acls(rendered) -> None:
    """The same (principal, resource, pattern, operation) set as deploy/local/roles.py grants."""
    local = {
        (
            binding.principal.removeprefix("User:"),
            binding.restype.name.lower(),
            binding.name,
            binding.resource_pattern_type.name.lower(),
            binding.operation.name.lower(),
        )
        for binding in acl_bindings()
    }
    kinds = {"topic": "topic", "group": "group", "transactionalId": "transactional_id"}
    patterns = {"literal": "literal", "prefix": "prefixed"}
    granted = set()
    for user in objects(rendered["production"], "KafkaUser"):
        role = user["metadata"]["name"].removeprefix("atlas-")
        assert user["metadata"]["name"] == user_name(role)
        for acl in user["spec"]["authorization"]["acls"]:
            resource = acl["resource"]
            for operation in acl["operations"]:
                granted.add(
                    (
                        role,
                        kinds[resource["type"]],
                        resource["name"],
                        patterns[resource["patternType"]],
                        {"DescribeConfigs": "describe_configs"}.get(operation, operation.lower()),
                    )
                )
    assert granted == local


def test_scalers_stop_at_the_partitions_of_their_input_topics(rendered) -> None:
    docs = rendered["production"]
    specs = topic_specs(PROJECT_CONFIGS)
    deployments = {d["metadata"]["name"]: d for d in objects(docs, "Deployment")}
    for scaled in objects(docs, "ScaledObject"):
        target = deployments[scaled["spec"]["scaleTargetRef"]["name"]]
        assert "replicas" not in target["spec"], "a re-apply would reset KEDA's replica count"
        triggers = scaled["spec"]["triggers"]
        topics = [t["metadata"]["topic"] for t in triggers]
        assert scaled["spec"]["maxReplicaCount"] == max(specs[t].partitions for t in topics)
        (container,) = target["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e for e in container["env"]}
        # KEDA reads the lag with the worker's own user: env username, its Strimzi Secret
        assert env["ATLAS_KAFKA_SASL_USERNAME"]["value"] == user_name(container["command"][2])
    assert all(s["spec"]["maxReplicaCount"] == 1 for s in objects(rendered["dev"], "ScaledObject"))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_workloads_have_probes_resources_budgets_and_referenced_secrets(rendered, overlay) -> None:
    docs = rendered[overlay]
    assert not objects(docs, "Secret"), "Secrets are referenced, never part of the manifests"
    budgets = [b["spec"]["selector"]["matchLabels"] for b in objects(docs, "PodDisruptionBudget")]
    shipped_deepspeed = sorted(p.name for p in (PROJECT_CONFIGS / "deepspeed").glob("*.json"))
    for workload in objects(docs, *WORKLOADS):
        template = workload["spec"]["template"]
        labels = template["metadata"]["labels"]
        name = workload["metadata"]["name"]
        assert any(selector.items() <= labels.items() for selector in budgets), name
        assert template["spec"]["securityContext"]["runAsNonRoot"] is True
        for container in template["spec"]["containers"]:
            assert container["livenessProbe"] and container["readinessProbe"], name
            assert container["resources"]["requests"] and container["resources"]["limits"]
            if container["securityContext"]["readOnlyRootFilesystem"]:  # caches need a home
                home = next(e["value"] for e in container["env"] if e["name"] == "HOME")
                assert home in [m["mountPath"] for m in container["volumeMounts"]], name
            for variable in container["env"]:
                if any(w in variable["name"] for w in ("PASSWORD", "SIGNING_KEY")):
                    assert set(variable) == {"name", "valueFrom"}, variable["name"]
                    assert "secretKeyRef" in variable["valueFrom"], variable["name"]
        for volume in template["spec"].get("volumes", []):
            if "secret" in volume:  # only the public cluster CA is a file
                assert [i["key"] for i in volume["secret"]["items"]] == ["ca.crt"]
            if volume["name"] == "configs":  # every DeepSpeed config projected back in place
                sources = [s["configMap"] for s in volume["projected"]["sources"]]
                deepspeed = next(s for s in sources if s["name"] == "atlas-deepspeed")
                assert sorted(i["key"] for i in deepspeed["items"]) == shipped_deepspeed, name


def test_the_gpu_learner_trains_with_the_gpu_deepspeed_config(rendered) -> None:
    (learner,) = [
        s
        for s in objects(rendered["production"], "StatefulSet")
        if s["metadata"]["name"] == "atlas-grpo"
    ]
    spec = learner["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    (configs,) = [v for v in spec["volumes"] if v["name"] == "configs"]
    sources = [s["configMap"] for s in configs["projected"]["sources"]]
    assert "atlas-grpo-gpu" in [s["name"] for s in sources]
    config_maps = {c["metadata"]["name"]: c for c in objects(rendered["production"], "ConfigMap")}
    gpu = yaml.safe_load(config_maps["atlas-grpo-gpu"]["data"]["grpo.yaml"])
    cpu = yaml.safe_load((PROJECT_CONFIGS / "grpo.yaml").read_text())
    assert gpu == {**cpu, "deepspeed_config": "deepspeed/zero3_offload.json"}
    assert Path(PROJECT_CONFIGS / gpu["deepspeed_config"]).exists()


def test_the_gpu_config_needs_exactly_one_deepspeed_line() -> None:
    grpo = (PROJECT_CONFIGS / "grpo.yaml").read_text()
    for broken in (grpo.replace("deepspeed_config:", "# deepspeed_config:"), grpo * 2):
        with pytest.raises(ValueError, match="exactly one line"):
            gpu_grpo_config(broken)


def test_every_worker_command_exists_and_every_worker_is_deployed(rendered) -> None:
    from atlas.commands.workers import app as workers

    runner = CliRunner()
    deployed = set()
    for workload in objects(rendered["production"], *WORKLOADS):
        for container in workload["spec"]["template"]["spec"]["containers"]:
            command = container["command"]
            if command[:2] != ["atlas", "worker"]:
                continue  # the console's command comes with the console (issue 20 item 1)
            result = runner.invoke(app, [*command[1:], "--help"])
            assert result.exit_code == 0, (command, result.output)
            deployed.add(command[2])
    assert deployed == {command.name for command in workers.registered_commands}
