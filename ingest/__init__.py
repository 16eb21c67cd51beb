"""Network edges that turn other people's telemetry into our events: the OpenAI-compatible
recording proxy (``ingest.proxy``). May import only ``schemas`` and ``runtime``."""
