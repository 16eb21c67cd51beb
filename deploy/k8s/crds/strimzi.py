"""Regenerates strimzi-0.45.0/*.json: the CRD schemas of the Strimzi kinds the manifests use,
made by Strimzi's own CRD generator (io.strimzi:crd-generator) from its API model
(io.strimzi:api), both from Maven Central, with the arguments Strimzi's api/pom.xml passes when
it writes packaging/install/cluster-operator/04*-Crd-*.yaml. Needs mvn and java.

    python deploy/k8s/crds/strimzi.py

Each file is the openAPIV3Schema of the served storage version, descriptions removed.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

import yaml

VERSION = "0.45.0"
OUT = Path(__file__).resolve().parent / f"strimzi-{VERSION}"
POM = f"""<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local</groupId><artifactId>strimzi-crds</artifactId><version>1</version>
  <dependencies>
    <dependency><groupId>io.strimzi</groupId><artifactId>api</artifactId>
      <version>{VERSION}</version></dependency>
    <dependency><groupId>io.strimzi</groupId><artifactId>crd-generator</artifactId>
      <version>{VERSION}</version></dependency>
  </dependencies>
</project>
"""
# kind -> (model class, the API versions Strimzi generates it with)
KINDS = {
    "Kafka": ("io.strimzi.api.kafka.model.kafka.Kafka", "v1beta2"),
    "KafkaNodePool": ("io.strimzi.api.kafka.model.nodepool.KafkaNodePool", "v1beta2"),
    "KafkaTopic": ("io.strimzi.api.kafka.model.topic.KafkaTopic", "v1alpha1,v1beta1,v1beta2"),
    "KafkaUser": ("io.strimzi.api.kafka.model.user.KafkaUser", "v1alpha1,v1beta1,v1beta2"),
}


def without_descriptions(node: object) -> object:
    if isinstance(node, dict):
        return {k: without_descriptions(v) for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [without_descriptions(v) for v in node]
    return node


def main() -> None:
    OUT.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        folder = Path(work)
        (folder / "pom.xml").write_text(POM)
        subprocess.run(
            ["mvn", "-q", "dependency:build-classpath", "-Dmdep.outputFile=cp.txt"],
            cwd=folder,
            check=True,
        )
        classpath = (folder / "cp.txt").read_text().strip()
        for kind, (model, versions) in KINDS.items():
            crd_file = folder / f"{kind}.yaml"
            subprocess.run(
                ["java", "-cp", classpath, "io.strimzi.crdgenerator.CrdGenerator",
                 "--label", "app:strimzi", "--target-kube", "1.16+",
                 "--crd-api-version", "v1", "--api-versions", versions,
                 "--storage-version", "v1beta2", "--yaml", f"{model}={crd_file}"],
                check=True,
            )  # fmt: skip
            crd = yaml.safe_load(crd_file.read_text())
            (version,) = [v for v in crd["spec"]["versions"] if v["storage"]]
            schema = without_descriptions(version["schema"]["openAPIV3Schema"])
            target = OUT / f"{kind}.{version['name']}.json"
            target.write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
            print(target.name, len(target.read_text()), "bytes")


if __name__ == "__main__":
    main()
