"""The `atlas` command groups, one module each, every one exporting its own Typer app;
``atlas.cli`` assembles them. Shared pieces (error handling, settings from the Typer context,
the `--since` parser, logging) live in ``atlas.commands.common``."""
