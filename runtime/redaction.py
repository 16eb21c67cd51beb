"""PII redaction: e-mail addresses, phone numbers, payment cards, IBANs, IP addresses and the
custom patterns of ``configs/redaction.yaml``, replaced by typed placeholders (``<EMAIL>``),
under a per-agent policy: ``off`` (unchanged), ``mask`` (placeholders, the default) or ``drop``
(the whole text becomes one marker, ``<REDACTED>``).

Why our own and not a library: Microsoft Presidio's ``AnalyzerEngine`` needs a spaCy model
download before it analyses anything (it fails offline), and ``presidio-analyzer`` pulls spaCy
in even for its pattern recognizers, whose e-mail recognizer fetches the public-suffix list from
the network on first use; ``scrubadub`` ran offline but found no phone numbers in its default
configuration and pulls scikit-learn, textblob and faker. Checked 2026-11 with pip in a
throwaway venv. The detectors here (``runtime/redaction_detectors.py``) are small, validated
(Luhn, IBAN mod 97, octet ranges) and measured by ``benchmarks/redaction.py``.

Guarantees:
* Pure: no I/O, no Kafka; a ``Redactor`` is immutable once built and safe to share by threads.
* Bounded work: built-in patterns are linear-time; custom patterns run on the ``regex`` engine
  with a per-text timeout. A text longer than ``max_chars``, or one a custom pattern times out
  on, fails closed: it is replaced whole by the drop marker (never returned unscanned).
* Typed input: ``None`` is the empty text, ``bytes`` are decoded as UTF-8 (invalid bytes
  replaced); any other type raises TypeError. Placeholders contain no PII and are left alone
  by the built-in detectors, so redacting twice changes nothing more.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import regex
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from runtime.redaction_detectors import BUILTIN_KINDS, PRIORITY, Span, builtin_spans, resolve
from schemas.configfile import ConfigError, load_config

Policy = Literal["off", "mask", "drop"]
KIND = r"^[A-Z][A-Z0-9_]{0,31}$"
DROPPED = "DROPPED"  # the count key of a text a drop policy (or a fail-closed) replaced
NESTED_QUANTIFIER = re.compile(r"\((?:[^()\\]|\\.)*[+*}]\)[+*{]")


def _policy(value: Any) -> Any:
    """YAML reads a bare ``off`` as false (and ``on`` as true): take them as policies."""
    if value is False:
        return "off"
    if value is True:
        return "mask"
    return value


class CustomPattern(BaseModel):
    """One extra pattern: matches become ``<KIND>``."""

    model_config = ConfigDict(extra="forbid")

    kind: str = Field(pattern=KIND, description="The placeholder's name: <KIND>.")
    pattern: str = Field(min_length=1, max_length=2000, description="A Python/regex pattern.")
    ignore_case: bool = False

    @model_validator(mode="after")
    def _compiles(self) -> CustomPattern:
        try:
            regex.compile(self.pattern, regex.IGNORECASE if self.ignore_case else 0)
        except regex.error as exc:
            raise ValueError(
                f"pattern {self.kind} ({self.pattern[:60]!r}) is not a regex: {exc}"
            ) from None
        if NESTED_QUANTIFIER.search(self.pattern):
            raise ValueError(
                f"pattern {self.kind} ({self.pattern[:60]!r}) repeats a repeated group, which"
                " can backtrack catastrophically; rewrite it without nested quantifiers"
            )
        if regex.compile(self.pattern).fullmatch(""):
            raise ValueError(f"pattern {self.kind} ({self.pattern[:60]!r}) matches empty text")
        return self


class RedactionConfig(BaseModel):
    """``configs/redaction.yaml``; every setting has a default (no file = mask everything)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    default_policy: Policy = Field("mask", description="The policy of an agent not listed.")
    agents: dict[str, Policy] = Field(
        default_factory=dict, description="Per agent id: off, mask or drop."
    )
    kinds: list[str] = Field(
        default_factory=lambda: list(BUILTIN_KINDS),
        description="Built-in detectors in use: EMAIL, PHONE, CARD, IBAN, IP.",
    )
    patterns: list[CustomPattern] = Field(default_factory=list)
    drop_marker: str = Field("<REDACTED>", min_length=1, max_length=64)
    max_chars: int = Field(
        2_000_000, ge=1, description="Longer texts are dropped whole (fail closed)."
    )
    pattern_timeout_s: float = Field(
        0.5, gt=0, le=60, description="Time all custom patterns may take on one text."
    )

    _as_policy = field_validator("default_policy", mode="before")(_policy)

    @field_validator("agents", mode="before")
    @classmethod
    def _agent_policies(cls, value: Any) -> Any:
        return {k: _policy(v) for k, v in value.items()} if isinstance(value, dict) else value

    @field_validator("kinds")
    @classmethod
    def _known_kinds(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - set(BUILTIN_KINDS))
        if unknown:
            raise ValueError(f"unknown kinds {unknown}; built-in: {', '.join(BUILTIN_KINDS)}")
        return value


def load_redaction_config(config_dir: Path) -> RedactionConfig:
    """``config_dir/redaction.yaml``; no file means the defaults (mask every agent). A broken
    file is a one-line ConfigError naming the file and the setting (or pattern)."""
    path = config_dir / "redaction.yaml"
    if not path.exists():
        return RedactionConfig()
    config = load_config(path, RedactionConfig)
    if not isinstance(config, RedactionConfig):  # pragma: no cover - load_config's contract
        raise ConfigError(f"{path}: not a redaction config")
    return config


SHORT_TEXT_CHARS = 256
SHORT_TEXTS_KEPT = 10_000


@dataclass(frozen=True)
class Redaction:
    """A redacted text and how many of each kind it held (``DROPPED``: replaced whole)."""

    text: str
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return bool(self.counts)


class Redactor:
    """Finds and replaces PII under a :class:`RedactionConfig`."""

    def __init__(self, config: RedactionConfig | None = None):
        self.config = config or RedactionConfig()
        self._kinds = frozenset(self.config.kinds)
        self._custom = [
            (p.kind, regex.compile(p.pattern, regex.IGNORECASE if p.ignore_case else 0))
            for p in self.config.patterns
        ]
        self._priority = {
            **PRIORITY,
            **{p.kind: 50 + i for i, p in enumerate(self.config.patterns)},
        }
        # Short texts recur (judges' rationales, tool names, canned replies): each is scanned
        # once per SHORT_TEXTS_KEPT distinct ones. A redaction depends on the text and the
        # policy alone (a pattern that timed out keeps its text dropped, failing closed).
        self._short: dict[tuple[str, Policy], Redaction] = {}

    @classmethod
    def from_config_dir(cls, config_dir: Path) -> Redactor:
        return cls(load_redaction_config(config_dir))

    def policy_for(self, agent_id: str | None) -> Policy:
        if agent_id is None:
            return self.config.default_policy
        return self.config.agents.get(agent_id, self.config.default_policy)

    def spans(self, text: str) -> list[Span]:
        """The non-overlapping PII spans of ``text``; TimeoutError if a custom pattern runs
        past ``pattern_timeout_s``."""
        return self._resolved(text, builtin_spans(text, self._kinds))

    def _resolved(self, text: str, found: list[Span]) -> list[Span]:
        """``found`` (built-in spans) with the custom patterns' spans, resolved."""
        if self._custom:
            deadline = self.config.pattern_timeout_s
            for kind, pattern in self._custom:
                for match in pattern.finditer(text, timeout=deadline):
                    if match.end() > match.start():
                        found.append(Span(match.start(), match.end(), kind))
        return resolve(found, self._priority)

    def redact(
        self, text: object, agent_id: str | None = None, policy: Policy | None = None
    ) -> Redaction:
        """``text`` under ``policy`` (default: the agent's). Empty text stays empty."""
        value = _as_text(text)
        policy = policy or self.policy_for(agent_id)
        if policy == "off" or not value:
            return Redaction(value)
        if policy == "drop" or len(value) > self.config.max_chars:
            return Redaction(self.config.drop_marker, {DROPPED: 1})
        if len(value) > SHORT_TEXT_CHARS:
            return self._scanned(value)
        known = self._short.get((value, policy))
        if known is None:
            if len(self._short) >= SHORT_TEXTS_KEPT:
                self._short.clear()
            known = self._short[(value, policy)] = self._scanned(value)
        return known

    def _scanned(self, value: str) -> Redaction:
        try:
            return _replaced(value, self.spans(value))
        except TimeoutError:
            return Redaction(self.config.drop_marker, {DROPPED: 1})

    def __call__(self, text: object, agent_id: str | None = None) -> str:
        """The redacted text alone."""
        return self.redact(text, agent_id).text


def _replaced(text: str, spans: list[Span]) -> Redaction:
    """``text`` with each (resolved, ordered) span replaced by its placeholder."""
    if not spans:
        return Redaction(text)
    parts, last = [], 0
    for span in spans:
        parts.append(text[last : span.start])
        parts.append(f"<{span.kind}>")
        last = span.end
    parts.append(text[last:])
    return Redaction("".join(parts), dict(Counter(s.kind for s in spans)))


def _as_text(text: object) -> str:
    if text is None:
        return ""
    if isinstance(text, str):
        return text
    if isinstance(text, (bytes, bytearray, memoryview)):
        return bytes(text).decode("utf-8", "replace")
    raise TypeError(f"redaction takes text, not {type(text).__name__}")
