"""Opening the store: one target, either an embedded chdb directory or a ClickHouse server.

* ``chdb:///abs/path``: the ClickHouse engine in this process (one process per directory).
* ``http(s)://[user[:password]@]host[:port][/database]``: a ClickHouse server, or the local
  store that ``atlas up`` serves over chdb. ``https`` means TLS (default port 8443, certificates
  verified against ``ca_cert`` or the system's CAs); ``http`` defaults to port 8123.

A :class:`StoreTarget` keeps the password as a ``SecretStr``; ``str()`` of a target and every
error message it raises show the URL with the password replaced by ``***``.
"""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import quote, unquote, urlsplit

import clickhouse_connect
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError
from pydantic import BaseModel, ConfigDict, SecretStr

from schemas.secrets import REDACTED, redact_url


class StoreUnavailable(Exception):
    """The store cannot be reached or opened; the message says which and why."""


class StoreTarget(BaseModel):
    """Where the store is and how to authenticate; safe to print."""

    model_config = ConfigDict(frozen=True)

    interface: Literal["http", "https", "chdb"]
    host: str = ""
    port: int = 0
    database: str = "default"
    path: str = ""
    username: str = "default"
    password: SecretStr | None = None
    verify: bool = True
    ca_cert: str | None = None

    @classmethod
    def parse(
        cls,
        url: str,
        password: SecretStr | str | None = None,
        ca_cert: str | None = None,
        verify: bool = True,
    ) -> StoreTarget:
        """A target from a URL; ``password`` (e.g. ATLAS_CLICKHOUSE_PASSWORD) wins over one in
        the URL."""
        if not url or "://" not in url:
            raise StoreUnavailable(
                f"invalid ClickHouse URL {redact_url(url)!r}: expected http(s)://host:port/db "
                "or chdb:///path"
            )
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https", "chdb"):
            raise StoreUnavailable(
                f"unsupported ClickHouse URL scheme {scheme!r} in {redact_url(url)!r}: use "
                "http, https or chdb"
            )
        if scheme == "chdb":
            return cls(interface="chdb", path=unquote(parts.netloc + parts.path))
        try:
            port = parts.port or (8443 if scheme == "https" else 8123)
        except ValueError:
            raise StoreUnavailable(f"invalid port in ClickHouse URL {redact_url(url)!r}") from None
        if not parts.hostname:
            raise StoreUnavailable(f"no host in ClickHouse URL {redact_url(url)!r}")
        secret = password if password is not None else unquote(parts.password or "") or None
        return cls(
            interface=scheme,
            host=parts.hostname,
            port=port,
            database=unquote(parts.path.strip("/")) or "default",
            username=unquote(parts.username or "") or "default",
            password=SecretStr(secret) if isinstance(secret, str) else secret,
            verify=verify,
            ca_cert=ca_cert,
        )

    def url(self) -> str:
        """The URL with the password redacted."""
        if self.interface == "chdb":
            return f"chdb://{self.path}"
        user = quote(self.username, safe="")
        auth = f"{user}:{REDACTED}@" if self.password else f"{user}@"
        return f"{self.interface}://{auth}{self.host}:{self.port}/{self.database}"

    def with_database(self, database: str) -> StoreTarget:
        return self.model_copy(update={"database": database})

    def redact(self, text: str) -> str:
        """``text`` with this target's password replaced, wherever it occurs."""
        secret = self.password.get_secret_value() if self.password else ""
        if not secret:
            return text
        for form in {secret, quote(secret, safe=""), quote(secret)}:
            text = text.replace(form, REDACTED)
        return text

    def __str__(self) -> str:
        return self.url()


def connect(target: StoreTarget | str, **kwargs: Any) -> Client:
    """A clickhouse-connect client for ``target`` (a target, or a URL string)."""
    if isinstance(target, str):
        target = StoreTarget.parse(target)
    try:
        if target.interface == "chdb":
            return clickhouse_connect.get_client(dsn=target.url(), **kwargs)
        kwargs.setdefault("connect_timeout", 5)
        kwargs.setdefault("send_receive_timeout", 120)
        kwargs.setdefault("query_retries", 1)
        return clickhouse_connect.get_client(
            interface=target.interface,
            host=target.host,
            port=target.port,
            database=target.database,
            username=target.username,
            password=target.password.get_secret_value() if target.password else "",
            secure=target.interface == "https",
            verify=target.verify,
            ca_cert=target.ca_cert,
            **kwargs,
        )
    except ClickHouseError as exc:
        reason = target.redact(str(exc).splitlines()[0])
        raise StoreUnavailable(f"cannot reach ClickHouse at {target}: {reason}") from None
    except Exception as exc:  # chdb lock errors, bad paths, TLS setup
        reason = target.redact(str(exc))
        raise StoreUnavailable(f"cannot open ClickHouse at {target}: {reason}") from None
