"""Reading what a person typed into the console: each parser returns a value ClickHouse can
take or raises ``BadInput`` with a message saying which field is wrong and what it accepts.

Nothing here builds SQL: the values go to ``store/`` as query parameters.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

from atlas.console.app import BadInput
from atlas.report import parse_duration

MAX_ID = 200  # agent, trace and job ids are short; a longer one matches nothing anyway
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)  # inside DateTime64(3)'s range
INT32 = (-(2**31), 2**31 - 1)


def text(value: str | None, name: str, limit: int = MAX_ID) -> str | None:
    """A short text filter; None when empty."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    if len(value) > limit:
        raise BadInput(f"{name}: at most {limit} characters")
    if any(ord(c) < 32 for c in value):
        raise BadInput(f"{name}: control characters are not allowed")
    return value


def instant(value: str | None, name: str) -> datetime | None:
    """A point in time: an ISO date or date-time (UTC unless it says otherwise), or a
    duration ago ('30m', '24h', '7d'); None when empty."""
    value = text(value, name, 64)
    if value is None:
        return None
    try:
        when = datetime.now(UTC) - parse_duration(value)
    except ValueError:
        try:
            when = datetime.fromisoformat(value)
        except ValueError:
            raise BadInput(
                f"{name}: {value[:40]!r} is neither a date-time (2026-11-27T14:00) nor a"
                " duration ago (24h, 7d)"
            ) from None
    when = when if when.tzinfo else when.replace(tzinfo=UTC)
    if not EARLIEST <= when < LATEST:
        raise BadInput(f"{name}: between 1970 and 2200")
    return when


def number(value: str | None, name: str, bound: float = 1e9) -> float | None:
    """A finite number within ±``bound``; None when empty."""
    value = text(value, name, 64)
    if value is None:
        return None
    try:
        parsed = float(value)
    except ValueError:
        raise BadInput(f"{name}: {value[:40]!r} is not a number") from None
    if not math.isfinite(parsed) or abs(parsed) > bound:
        raise BadInput(f"{name}: a finite number between {-bound:g} and {bound:g}")
    return parsed


def integer(value: str | None, name: str, low: int = INT32[0], high: int = INT32[1]) -> int | None:
    """A whole number in [low, high]; None when empty."""
    value = text(value, name, 32)
    if value is None:
        return None
    try:
        parsed = int(value)
    except ValueError:
        raise BadInput(f"{name}: {value[:40]!r} is not a whole number") from None
    if not low <= parsed <= high:
        raise BadInput(f"{name}: between {low} and {high}")
    return parsed


def window(value: str | None, default: str) -> tuple[str, timedelta]:
    """A data window ending now ('24h', '7d'), as written and as a length."""
    written = text(value, "window", 32) or default
    try:
        return written, parse_duration(written)
    except ValueError as exc:
        raise BadInput(f"window: {exc}") from None


def role(value: str | None) -> str:
    from runtime.prompts import ROLES

    if value not in ROLES:
        raise BadInput(f"role: choose {' or '.join(ROLES)}")
    return value
