"""Text measures shared by the memory's writer (``streams/memory.py``) and its reader
(``runtime/memory.py``): one definition of a retrieval term and of a rough token count, so an
entry's stored terms and a task's query terms are always tokenised the same way."""

from __future__ import annotations

import re

WORD = re.compile(r"\w+")
MAX_TERM_CHARS = 40


def normalised(text: str) -> str:
    """The input as it identifies a task: case-folded, whitespace collapsed."""
    return " ".join(text.casefold().split())


def query_terms(text: str) -> list[str]:
    """Every lower-cased word token of ``text`` (repeats kept, each cut to
    ``MAX_TERM_CHARS``): what a search matches against entries' ``terms``."""
    return [token[:MAX_TERM_CHARS] for token in WORD.findall(text.casefold())]


def terms_of(text: str, limit: int) -> list[str]:
    """Distinct lower-cased word tokens of ``text`` in order of first appearance, at most
    ``limit`` of at most ``MAX_TERM_CHARS`` characters: an entry's retrieval terms."""
    seen: dict[str, None] = {}
    for token in WORD.findall(text.casefold()):
        if len(seen) >= limit:
            break
        seen.setdefault(token[:MAX_TERM_CHARS], None)
    return list(seen)


def rough_tokens(input_text: str, output_text: str) -> int:
    """A rough token count of one solved example shown as a user/assistant pair (about four
    characters a token, plus the turns' overhead); no tokenizer needed, so budgets can be
    kept on the agent's path and in the proposer alike."""
    return (len(input_text) + len(output_text)) // 4 + 8
