"""POSTing alerts to a webhook without ever holding up the stream.

Guarantees:
* ``notify`` never blocks and never raises: the alert goes on a bounded queue that one daemon
  thread empties, POSTing each as JSON (``Content-Type: application/json``) with a timeout.
  When the queue is full the alert is dropped for the webhook (the topic and the store keep
  it), and counted.
* Failures (network, HTTP status >= 300, a full queue) are logged at most once a minute, with
  how many happened since the last line; never fatal.
* The URL may carry a secret (a token in its path or query): only its scheme and host are
  ever logged.
* At least once, not exactly once: an alert is queued when its batch is filled, so a batch
  that is then retried may POST the same alert (same ``alert_id`` and ``state``) again, and
  one whose retry finds it no longer true may have been POSTed all the same. The compacted
  topic is the record; the webhook is a notification.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import urllib.request
from urllib.parse import urlsplit

from schemas.alerts import Alert

log = logging.getLogger(__name__)
LOG_EVERY_S = 60.0


def shown_url(url: str) -> str:
    """What may be logged of ``url``: its scheme and host (and port), nothing else."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}/..."


class WebhookNotifier:
    def __init__(self, url: str, timeout_s: float = 5.0, max_queued: int = 1000):
        self._url = url
        self.shown = shown_url(url)
        self.timeout_s = timeout_s
        self._queue: queue.Queue[Alert | None] = queue.Queue(max_queued)
        self.sent = 0
        self.failed = 0
        self._unlogged = 0
        self._logged_at = float("-inf")
        self._last_error = ""
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="alert-webhook", daemon=True)
        self._thread.start()

    def notify(self, alert: Alert) -> None:
        """Queue ``alert`` for the webhook; never blocks, never raises."""
        try:
            self._queue.put_nowait(alert)
        except queue.Full:
            self._failure("the queue is full: alert dropped for the webhook")

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued (for up to ``timeout`` seconds), then stop the thread."""
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            return
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            alert = self._queue.get()
            if alert is None:
                return
            try:
                self._post(alert)
                self.sent += 1
            except Exception as exc:  # whatever the network does, the thread goes on
                self._failure(f"{type(exc).__name__}: {_without(str(exc), self._url)}")

    def _post(self, alert: Alert) -> None:
        body = json.dumps(alert.model_dump(mode="json")).encode()
        request = urllib.request.Request(
            self._url, data=body, method="POST", headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
            if response.status >= 300:
                raise OSError(f"HTTP {response.status}")

    def _failure(self, error: str) -> None:
        with self._lock:
            self.failed += 1
            self._unlogged += 1
            self._last_error = error
            now = time.monotonic()
            if now - self._logged_at < LOG_EVERY_S:
                return
            self._logged_at, count, self._unlogged = now, self._unlogged, 0
        log.warning(
            "alert webhook %s: %d failure(s) in the last minute, the last: %s",
            self.shown,
            count,
            error[:300],
        )


def _without(text: str, url: str) -> str:
    """``text`` with ``url`` (and its path and query) cut out: urllib's errors may quote it."""
    parts = urlsplit(url)
    for secret in (url, parts.path, parts.query):
        if secret and secret != "/":
            text = text.replace(secret, "...")
    return text
