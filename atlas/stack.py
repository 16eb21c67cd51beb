"""The local stack: a real Kafka broker and the local ClickHouse store, as processes we own.

``up`` starts both (reusing data and ports from the last run), creates the topics from
``configs/topics.yaml``, applies the store's migrations and records PIDs and addresses in
``$ATLAS_HOME/stack.json``; ``down`` stops them by PID. The test suite uses this same code.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from confluent_kafka.admin import AdminClient

from atlas.settings import Settings, topic_specs
from deploy.local.kafka import KAFKA_MAIN, KafkaNode, KafkaSecurity, fetch_jars, require_tool
from deploy.local.processes import (
    StackError,
    free_port,
    kill_pid,
    log_tail,
    pid_alive,
    port_is_free,
    require_free_port,
    stop_pid,
)
from deploy.local.roles import ADMIN_ROLE, create_principals, password_file
from deploy.local.tls import StackTls, ensure_stack_tls
from schemas.secrets import ensure_secret, private_dir, write_private
from schemas.signing import PRIVATE_KEY_FILE, create_keys
from store.client import StoreTarget, connect
from store.migrations import migrate

if TYPE_CHECKING:
    from atlas.console.server import ConsoleState

STORE_MAIN = "deploy.local.store_server"


@dataclass
class KafkaState:
    pid: int
    bootstrap: str
    broker_port: int
    controller_port: int
    data_dir: str
    log: str
    secure: bool = False  # SASL_SSL + ACLs (`atlas up --secure`)
    ca_cert: str = ""


@dataclass
class StoreState:
    pid: int
    url: str
    port: int
    path: str
    log: str
    password_file: str = ""
    ca_cert: str = ""  # set when the store speaks HTTPS


@dataclass
class StackStatus:
    kafka: KafkaState | None
    store: StoreState | None
    kafka_running: bool
    store_running: bool


def read_status(settings: Settings) -> StackStatus:
    raw = settings.local_stack()
    kafka = KafkaState(**raw["kafka"]) if raw.get("kafka") else None
    store = StoreState(**raw["store"]) if raw.get("store") else None
    return StackStatus(
        kafka=kafka,
        store=store,
        kafka_running=bool(kafka and pid_alive(kafka.pid, KAFKA_MAIN)),
        store_running=bool(store and pid_alive(store.pid, STORE_MAIN)),
    )


PORT_ATTEMPTS = 20


def _pick_port(
    requested: int | None, previous: int | None, what: str, taken: tuple[int, ...] = ()
) -> int:
    """The port asked for (refused if busy), else the one used before if still free, else a
    free one the kernel offers that is not among ``taken``: the kernel may offer a port it just
    offered for another of the stack's servers, since nothing listens on it yet."""
    if requested:
        return require_free_port(requested, what)
    if previous and previous not in taken and port_is_free(previous):
        return previous
    for _ in range(PORT_ATTEMPTS):
        port = free_port()
        if port not in taken:
            return port
    raise StackError(f"no free port for {what} after {PORT_ATTEMPTS} tries")


def ensure_topics(
    kafka_config: dict[str, str], config_dir: Path, timeout: float = 30.0
) -> list[str]:
    """Create the missing contract topics; return the names created now."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({**kafka_config, "log_level": 0})
    existing = set(admin.list_topics(timeout=timeout).topics)
    missing = [
        NewTopic(
            name,
            num_partitions=spec.partitions,
            replication_factor=spec.replication_factor,
            config=spec.config,
        )
        for name, spec in topic_specs(config_dir).items()
        if name not in existing
    ]
    if not missing:
        return []
    for name, future in admin.create_topics(missing, operation_timeout=timeout).items():
        try:
            future.result(timeout)
        except Exception as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise StackError(f"cannot create topic {name}: {exc}") from exc
    return [topic.topic for topic in missing]


def _start_store(store: StoreState, tls: StackTls | None) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", STORE_MAIN, "--path", store.path, "--port", str(store.port)]
    command += ["--password-file", store.password_file]
    if tls is not None:
        command += ["--tls-cert", str(tls.node_cert), "--tls-key", str(tls.node_key)]
    with Path(store.log).open("ab") as out:
        os.chmod(store.log, 0o600)
        process = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return process


def _wait_store(process: subprocess.Popen[bytes], store: StoreState, timeout: float = 60.0) -> None:
    import ssl

    context = ssl.create_default_context(cafile=store.ca_cert) if store.ca_cert else None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log = Path(store.log)
            raise StackError(f"the local store exited during start-up: {log_tail(log, 3)}")
        try:
            with urllib.request.urlopen(
                f"{store.url}/ping", timeout=1, context=context
            ) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise StackError(f"the local store did not answer within {timeout:.0f}s; see {store.log}")


def up(
    settings: Settings,
    kafka_port: int | None = None,
    controller_port: int | None = None,
    store_port: int | None = None,
    say: Callable[[str], None] = lambda _msg: None,
    secure: bool = False,
) -> StackStatus:
    """Start the stack; ``secure``: Kafka over SASL_SSL with one principal and its ACLs per
    role, the store over HTTPS, both with certificates from a CA made for this stack."""
    current = read_status(settings)
    if current.kafka_running or current.store_running:
        where = []
        if current.kafka_running and current.kafka:
            where.append(f"Kafka {current.kafka.bootstrap} pid {current.kafka.pid}")
        if current.store_running and current.store:
            where.append(f"store {current.store.url} pid {current.store.pid}")
        raise StackError(
            f"the local stack is already running ({', '.join(where)}); `atlas down` stops it"
        )
    require_tool("java", "apt-get install -y default-jdk-headless")
    private_dir(settings.home)
    say("fetching Kafka jars (cached after the first run)")
    libs = fetch_jars(settings.cache_dir)

    previous_kafka = current.kafka
    if previous_kafka and previous_kafka.secure != secure:
        made = "--secure" if previous_kafka.secure else "without --secure"
        raise StackError(
            f"the stack in {settings.home} was made {made}; start it the same way, or use "
            "another ATLAS_HOME"
        )
    tls = ensure_stack_tls(settings.secrets_dir / "tls") if secure else None
    node = KafkaNode(
        data_dir=settings.home / "kafka",
        broker_port=_pick_port(kafka_port, previous_kafka and previous_kafka.broker_port, "Kafka"),
        controller_port=0,
        security=_kafka_security(settings, tls),
    )
    node.controller_port = _pick_port(
        controller_port,
        previous_kafka and previous_kafka.controller_port,
        "the controller",
        (node.broker_port,),
    )
    if node.controller_port == node.broker_port:
        raise StackError("the Kafka broker and controller ports must differ")
    previous_store = current.store
    port = _pick_port(
        store_port,
        previous_store and previous_store.port,
        "the store",
        (node.broker_port, node.controller_port),
    )
    if port in (node.broker_port, node.controller_port):
        raise StackError(f"port {port} is already used by Kafka; choose another for the store")
    store_password_file = settings.secrets_dir / "store.password"
    password = ensure_secret(store_password_file)
    store = StoreState(
        pid=0,
        url=f"{'https' if tls else 'http'}://127.0.0.1:{port}",
        port=port,
        path=str(settings.home / "store"),
        log=str(settings.home / "store.out"),
        password_file=str(store_password_file),
        ca_cert=str(tls.ca_cert) if tls else "",
    )

    say(f"starting Kafka on {node.bootstrap} and the store on {store.url}")
    kafka_process = node.start(libs)
    store_process = _start_store(store, tls)
    kafka_pid, store_pid = kafka_process.pid, store_process.pid
    store.pid = store_pid
    try:
        node.wait_ready(kafka_process)
        _wait_store(store_process, store)
        say("creating topics and applying store migrations")
        ensure_topics(node.admin_config(), settings.config_dir)
        if secure:
            say("creating one Kafka user per role and its ACLs")
            create_principals(AdminClient(node.admin_config()), settings.secrets_dir)
            if not (settings.secrets_dir / PRIVATE_KEY_FILE).exists():
                create_keys(settings.secrets_dir)  # signed prompts/checkpoints: on by default
        migrate(connect(StoreTarget.parse(store.url, password=password, ca_cert=store.ca_cert)))
    except BaseException:
        stop_pid(kafka_pid, KAFKA_MAIN)
        stop_pid(store_pid, STORE_MAIN)
        raise
    kafka = KafkaState(
        kafka_pid,
        node.bootstrap,
        node.broker_port,
        node.controller_port,
        str(node.data_dir),
        str(node.log_file),
        secure=secure,
        ca_cert=str(tls.ca_cert) if tls else "",
    )
    _save_state(settings, {"kafka": asdict(kafka), "store": asdict(store)})
    return StackStatus(kafka, store, True, True)


def start_console(settings: Settings, port: int) -> ConsoleState:
    """Start the web console as a process of the stack (stopped by ``down``)."""
    from atlas.console.server import start_console as start

    state = start(settings, port)
    raw = settings.local_stack()
    raw["console"] = asdict(state)
    _save_state(settings, raw)
    return state


def down(settings: Settings) -> list[str]:
    """Stop what ``up`` started, by PID; return what was stopped."""
    status = read_status(settings)
    stopped = []
    console = settings.local_stack().get("console")
    if console:
        from atlas.console.server import ConsoleState, stop_console

        if stop_console(ConsoleState(**console)):
            stopped.append(f"console (pid {console['pid']})")
    if status.store and stop_pid(status.store.pid, STORE_MAIN):
        stopped.append(f"store (pid {status.store.pid})")
    if status.kafka and stop_pid(status.kafka.pid, KAFKA_MAIN):
        stopped.append(f"Kafka (pid {status.kafka.pid})")
    return stopped


def stop_store(settings: Settings, kill: bool = False) -> bool:
    """Stop only the local store (the broker keeps running), or crash it with SIGKILL; True if
    it was running."""
    status = read_status(settings)
    if not status.store:
        return False
    return (kill_pid if kill else stop_pid)(status.store.pid, STORE_MAIN)


def stop_kafka(settings: Settings, kill: bool = False) -> bool:
    """Stop only the broker (the store keeps running), or crash it with SIGKILL."""
    status = read_status(settings)
    if not status.kafka:
        return False
    return (kill_pid if kill else stop_pid)(status.kafka.pid, KAFKA_MAIN)


def start_kafka(settings: Settings) -> KafkaState:
    """Start the broker again on its recorded ports and data (after a crash or a stop)."""
    raw = settings.local_stack()
    if not raw.get("kafka"):
        raise StackError("Kafka was never started: run `atlas up`")
    kafka = KafkaState(**raw["kafka"])
    if pid_alive(kafka.pid, KAFKA_MAIN):
        return kafka
    for port, what in ((kafka.broker_port, "Kafka"), (kafka.controller_port, "the controller")):
        require_free_port(port, what)
    tls = ensure_stack_tls(settings.secrets_dir / "tls") if kafka.secure else None
    node = KafkaNode(
        Path(kafka.data_dir),
        kafka.broker_port,
        kafka.controller_port,
        _kafka_security(settings, tls),
    )
    process = node.start(fetch_jars(settings.cache_dir))
    node.wait_ready(process)
    kafka.pid = process.pid
    raw["kafka"] = asdict(kafka)
    _save_state(settings, raw)
    return kafka


def start_store(settings: Settings) -> StoreState:
    """Start the local store again on its recorded port and data directory."""
    raw = settings.local_stack()
    if not raw.get("store"):
        raise StackError("the local store was never started: run `atlas up`")
    store = StoreState(**raw["store"])
    if pid_alive(store.pid, STORE_MAIN):
        return store
    require_free_port(store.port, "the store")
    tls = ensure_stack_tls(settings.secrets_dir / "tls") if store.ca_cert else None
    process = _start_store(store, tls)
    _wait_store(process, store)
    store.pid = process.pid
    raw["store"] = asdict(store)
    _save_state(settings, raw)
    return store


def _kafka_security(settings: Settings, tls: StackTls | None) -> KafkaSecurity | None:
    if tls is None:
        return None
    admin = ensure_secret(password_file(settings.secrets_dir, ADMIN_ROLE))
    return KafkaSecurity(tls, admin.get_secret_value())


def _save_state(settings: Settings, state: dict[str, Any]) -> None:
    """stack.json, atomically and private (it names the password file and every PID)."""
    write_private(settings.state_file, json.dumps(state, indent=2))
