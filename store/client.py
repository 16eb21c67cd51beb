"""Opening the store: one URL, either an embedded chdb directory or a ClickHouse server.

* ``chdb:///abs/path``: the ClickHouse engine in this process (one process per directory).
* ``http://[user:password@]host:port[/database]`` (or https): a ClickHouse server, or the
  local store that ``atlas up`` serves over chdb.
"""

from __future__ import annotations

from typing import Any

import clickhouse_connect
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError

DEFAULT_SETTINGS: dict[str, Any] = {}


class StoreUnavailable(Exception):
    """The store cannot be reached or opened; the message says which and why."""


def connect(url: str, **kwargs: Any) -> Client:
    if not url or "://" not in url:
        raise StoreUnavailable(
            f"invalid ClickHouse URL {url!r}: expected http://host:port or chdb:///path"
        )
    scheme = url.split("://", 1)[0]
    if scheme not in ("http", "https", "chdb"):
        raise StoreUnavailable(
            f"unsupported ClickHouse URL scheme {scheme!r} in {url!r}: use http, https or chdb"
        )
    try:
        if scheme == "chdb":
            return clickhouse_connect.get_client(dsn=url, **kwargs)
        kwargs.setdefault("connect_timeout", 5)
        kwargs.setdefault("send_receive_timeout", 120)
        kwargs.setdefault("query_retries", 1)
        return clickhouse_connect.get_client(dsn=url, **kwargs)
    except ClickHouseError as exc:
        reason = str(exc).splitlines()[0]
        raise StoreUnavailable(f"cannot reach ClickHouse at {url}: {reason}") from exc
    except Exception as exc:  # chdb lock errors, bad paths
        raise StoreUnavailable(f"cannot open ClickHouse at {url}: {exc}") from exc
