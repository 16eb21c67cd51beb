"""A real single-node Apache Kafka (KRaft, combined broker+controller) from Maven Central jars.

Plain by default. With :class:`KafkaSecurity` (``atlas up --secure``): clients reach the broker
only over SASL_SSL with SCRAM-SHA-512 (the admin user exists from the first start: StorageTool
formats it in, KIP-900), the controller listener takes only the node's own certificate (mutual
TLS), and the StandardAuthorizer denies whatever no ACL allows.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from deploy.local.processes import StackError, log_tail
from deploy.local.tls import StackTls
from schemas.secrets import write_private

POM = Path(__file__).with_name("kafka-pom.xml")
KAFKA_MAIN = "kafka.Kafka"


def kafka_version() -> str:
    text = POM.read_text()
    return text.split("<kafka.version>")[1].split("</kafka.version>")[0]


def require_tool(name: str, install_hint: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise StackError(f"{name} not found on PATH; install it: {install_hint}")
    return path


def fetch_jars(cache_dir: Path) -> Path:
    """Copy Kafka's runtime jars from Maven Central into the cache (once) and return the folder."""
    libs = cache_dir / f"kafka-{kafka_version()}" / "libs"
    if (libs / ".complete").exists():
        return libs
    mvn = require_tool(
        "mvn", "apt-get install -y maven (needs a JDK: apt-get install -y default-jdk-headless)"
    )
    staging = libs.with_name("libs.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    result = subprocess.run(
        [
            mvn,
            "-q",
            "-B",
            "-f",
            str(POM),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={staging}",
            "-DincludeScope=runtime",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        detail = (result.stdout + result.stderr).strip().splitlines()[-5:]
        raise StackError("fetching Kafka jars with Maven failed: " + " | ".join(detail))
    (staging / ".complete").write_text(kafka_version())
    shutil.rmtree(libs, ignore_errors=True)
    staging.rename(libs)
    return libs


SCRAM = "SCRAM-SHA-512"
ADMIN_USER = "admin"


@dataclass
class KafkaSecurity:
    tls: StackTls
    admin_password: str

    def client_config(self, user: str, password: str) -> dict[str, str]:
        """librdkafka settings for ``user`` on this broker."""
        return {
            "security.protocol": "SASL_SSL",
            "sasl.mechanism": SCRAM,
            "sasl.username": user,
            "sasl.password": password,
            "ssl.ca.location": str(self.tls.ca_cert),
        }

    def broker_properties(self, broker_port: int, controller_port: int) -> dict[str, str]:
        jaas = (
            "org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="{ADMIN_USER}" password="{self.admin_password}";'
        )
        return {
            "listeners": f"SASL_SSL://127.0.0.1:{broker_port},"
            f"CONTROLLER://127.0.0.1:{controller_port}",
            "advertised.listeners": f"SASL_SSL://127.0.0.1:{broker_port}",
            "inter.broker.listener.name": "SASL_SSL",
            "listener.security.protocol.map": "SASL_SSL:SASL_SSL,CONTROLLER:SSL",
            "sasl.enabled.mechanisms": SCRAM,
            "sasl.mechanism.inter.broker.protocol": SCRAM,
            "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": jaas,
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(self.tls.node_keystore),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(self.tls.ca_cert),
            "listener.name.controller.ssl.client.auth": "required",
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "allow.everyone.if.no.acl.found": "false",
            "super.users": f"User:{ADMIN_USER};{self.tls.node_principal}",
        }


@dataclass
class KafkaNode:
    data_dir: Path
    broker_port: int
    controller_port: int
    security: KafkaSecurity | None = None

    def admin_config(self) -> dict[str, str]:
        """What the stack's own admin client connects with."""
        config = {"bootstrap.servers": self.bootstrap}
        if self.security is not None:
            config.update(self.security.client_config(ADMIN_USER, self.security.admin_password))
        return config

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.broker_port}"

    @property
    def properties_file(self) -> Path:
        return self.data_dir / "server.properties"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "kafka.out"

    def write_config(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        logs = self.data_dir / "logs"
        settings = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.broker_port},"
            f"CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.broker_port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.data_dir / "data"),
            "num.partitions": "3",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "true",
            "log.cleaner.backoff.ms": "1000",
        }
        if self.security is not None:
            settings.update(self.security.broker_properties(self.broker_port, self.controller_port))
        # 0600: with --secure it holds the admin's password (the broker's JAAS line)
        write_private(self.properties_file, "".join(f"{k}={v}\n" for k, v in settings.items()))
        logs.mkdir(exist_ok=True)
        (self.data_dir / "log4j.properties").write_text(
            "log4j.rootLogger=WARN, file\n"
            "log4j.appender.file=org.apache.log4j.RollingFileAppender\n"
            f"log4j.appender.file.File={logs / 'server.log'}\n"
            "log4j.appender.file.MaxFileSize=10MB\n"
            "log4j.appender.file.MaxBackupIndex=2\n"
            "log4j.appender.file.layout=org.apache.log4j.PatternLayout\n"
            "log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n\n"
            "log4j.logger.kafka=INFO\n"
            "log4j.logger.org.apache.kafka=WARN\n"
        )

    def _java(self, libs: Path, main: str, *args: str) -> list[str]:
        java = require_tool("java", "apt-get install -y default-jdk-headless")
        return [
            java,
            "-Xms256m",
            "-Xmx1g",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j.configuration=file:{self.data_dir / 'log4j.properties'}",
            "-cp",
            f"{libs}/*",
            main,
            *args,
        ]

    def format_storage(self, libs: Path) -> None:
        if (self.data_dir / "data" / "meta.properties").exists():
            return
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        scram: list[str] = []
        argfile = self.data_dir / "format.args"
        if self.security is not None:  # the admin exists before the first start (KIP-900)
            # in an @argfile (0600; StorageTool reads one argument per line), not on the
            # command line where `ps` would show it
            user = f"name={ADMIN_USER},password={self.security.admin_password}"
            write_private(argfile, f"--add-scram\n{SCRAM}=[{user}]\n")  # one arg per line
            scram = [f"@{argfile}"]
        result = subprocess.run(
            self._java(
                libs,
                "kafka.tools.StorageTool",
                "format",
                # '=' form: a base64url id may start with '-', which would read as an option
                f"--cluster-id={cluster_id}",
                "-c",
                str(self.properties_file),
                *scram,
            ),
            capture_output=True,
            text=True,
            check=False,
        )
        argfile.unlink(missing_ok=True)
        if result.returncode != 0:
            raise StackError(f"formatting Kafka storage failed: {result.stdout}{result.stderr}")

    def start(self, libs: Path) -> subprocess.Popen[bytes]:
        self.write_config()
        self.format_storage(libs)
        with self.log_file.open("ab") as log:
            process = subprocess.Popen(
                self._java(libs, KAFKA_MAIN, str(self.properties_file)),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        return process

    def wait_ready(self, process: subprocess.Popen[bytes], timeout: float = 90.0) -> None:
        """Block until an admin client lists topics; fail fast if the JVM exits."""
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({**self.admin_config(), "log_level": 0})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            # poll(), not the PID's command line: right after fork it is still ours
            if process.poll() is not None:
                raise StackError(
                    f"Kafka exited during start-up; last lines of {self.log_file}:\n"
                    + log_tail(self.log_file)
                )
            try:
                admin.list_topics(timeout=2)
                return
            except Exception:
                time.sleep(0.3)
        raise StackError(f"Kafka did not answer within {timeout:.0f}s; see {self.log_file}")
