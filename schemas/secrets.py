"""Secrets and private state on disk: files only their owner can read, folders only their owner
can enter, written atomically so a crash never leaves half a file.

Every process reads its secrets through here (the local store's password, signing keys), so
one rule holds everywhere: a secret file readable by group or others is refused, not used.
It lives in schemas because every layer, the local store process included, may import it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from pathlib import Path

from pydantic import SecretStr

from schemas.configfile import ConfigError

REDACTED = "***"

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


class SecretFileError(ConfigError):
    """A secret file that is missing, empty, or readable by others; one line."""


def private_dir(path: Path) -> Path:
    """``path`` (and missing parents) as a folder only its owner can enter."""
    path.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o077:
        path.chmod(PRIVATE_DIR_MODE)
    return path


def write_private(path: Path, data: str | bytes) -> None:
    """Write ``data`` to ``path`` with mode 0600, atomically (a temporary file, then rename)."""
    private_dir(path.parent)
    raw = data.encode() if isinstance(data, str) else data
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as out:  # mkstemp creates it 0600
            out.write(raw)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def read_secret(path: Path) -> SecretStr:
    """The secret in ``path``: refused if the file is missing, empty or readable by others."""
    try:
        mode = path.stat().st_mode
        if mode & 0o077:
            raise SecretFileError(
                f"{path} is readable by others (mode {mode & 0o777:o}): `chmod 600 {path}`, "
                "and rotate the secret if others could have read it"
            )
        value = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise SecretFileError(f"cannot read the secret file {path}: {exc.strerror}") from None
    if not value:
        raise SecretFileError(f"the secret file {path} is empty")
    return SecretStr(value)


def ensure_secret(path: Path) -> SecretStr:
    """The secret in ``path``, made (32 random bytes, URL-safe) the first time."""
    if not path.exists():
        write_private(path, secrets.token_urlsafe(32) + "\n")
    return read_secret(path)


_known: set[str] = set()
MIN_SCRUBBED_LENGTH = 6  # shorter values would blank out ordinary words


def remember(secret: SecretStr | str | None) -> None:
    """Note a secret this process holds, so :func:`scrub` removes it from text."""
    value = secret.get_secret_value() if isinstance(secret, SecretStr) else secret
    if value and len(value) >= MIN_SCRUBBED_LENGTH:
        from urllib.parse import quote

        _known.update({value, quote(value, safe=""), quote(value)})


def redact_url(url: str) -> str:
    """A URL with any password in it replaced by ``***`` (for messages and logs)."""
    if not url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    netloc, slash, tail = rest.partition("/")
    if "@" in netloc:
        auth, _, host = netloc.rpartition("@")
        user = auth.split(":", 1)[0]
        netloc = f"{user}:{REDACTED}@{host}" if ":" in auth else f"{user}@{host}"
    return f"{scheme}://{netloc}{slash}{tail}"


def scrub(text: str) -> str:
    """``text`` with every remembered secret replaced by ``***``."""
    for value in _known:
        if value in text:
            text = text.replace(value, "***")
    return text


def scrub_log_records() -> None:
    """Every log record of this process, its message and traceback, scrubbed of remembered
    secrets when it is made (so whichever handler Faust or a library installs sees it clean)."""
    import logging

    make = logging.getLogRecordFactory()
    if getattr(make, "scrubs_secrets", False):
        return

    def scrubbed(*args: object, **kwargs: object) -> logging.LogRecord:
        record = make(*args, **kwargs)
        if _known:
            try:
                message = record.getMessage()
            except Exception:  # a caller's bad format arguments: the handler reports it
                return record
            record.msg, record.args = scrub(message), ()  # () not None: mode formats args
            if record.exc_info:
                record.exc_text = scrub(logging.Formatter().formatException(record.exc_info))
        return record

    scrubbed.scrubs_secrets = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(scrubbed)
