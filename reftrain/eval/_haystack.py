"""Haystack text for NIAH: real prose split into sentences, tokenized one sentence at a time.

Sentences end at `.`, `!` or `?` followed by whitespace; whitespace inside a sentence is
collapsed to single spaces (the plays' line breaks would otherwise cost a token each). Each
sentence is encoded on its own, so SentencePiece's leading `▁` makes the concatenated tokens
read "sentence. sentence." and every sentence start is a token boundary. Only as many
sentences as the longest context needs are encoded; a short text is repeated to fill.

The default haystack is HELD_OUT, text that no training stream reads: the prose of docutils
0.21.2's documentation (`docs/**/*.txt` of its sdist, reStructuredText with its heading
underlines dropped; about 380K tokens). Until issue 30 it was the built-in books, which the
small preset's base stage memorised, and its needle prompts were answered by reciting them;
`--haystack builtin:books` still gives them.
"""

from __future__ import annotations

import re

import numpy as np

from reftrain.data import DataError, Tokenizer

BOOKS = "builtin:books"
HELD_OUT = "held-out:docutils-docs"
# The cheat sheet restates the quick reference that builtin:web holds; the headers are templates.
_HELD_OUT_SKIP = ("docs/user/rst/cheatsheet.txt", "docs/header.txt", "docs/header0.txt", "docs/header2.txt")
_UNDERLINE = re.compile(r"^\s*([=\-~^\"'`#*+:.])\1{3,}\s*$", re.MULTILINE)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_LONG_NUMBER = re.compile(r"\d{7,}")
_ENCODE_BATCH = 2048  # sentences per encode call


class NIAHError(ValueError):
    """A user-facing NIAH error (bad length, depth, haystack): the CLI prints it on one line."""


def books_text() -> str:
    """Returns the built-in books (Project Gutenberg: Shakespeare first, then Milton) as one text."""
    from reftrain.data._builtin import builtin_source

    try:
        docs = list(builtin_source(BOOKS).documents())
    except DataError as error:
        raise NIAHError(f"cannot load the built-in books: {error}") from None
    docs.sort(key=lambda doc: (not doc[0].startswith("shkspr/"), doc[0]))
    return "\n\n".join(text for _, text in docs)


def held_out_text() -> str:
    """Returns HELD_OUT: docutils' documentation prose, files in path order, underlines dropped."""
    from reftrain.data._fetch import DOCUTILS, archive_files

    try:
        root, names = archive_files(DOCUTILS, ("docs/*.txt",))
    except DataError as error:
        raise NIAHError(f"cannot load the held-out haystack: {error}") from None
    texts = [(root / n).read_bytes().decode("utf-8", errors="replace") for n in names if n not in _HELD_OUT_SKIP]
    return "\n\n".join(_UNDERLINE.sub("", text) for text in texts)


def split_sentences(text: str) -> list[str]:
    """Returns the non-empty sentences of `text`, inner whitespace collapsed to single spaces."""
    sentences = (" ".join(part.split()) for part in _SENTENCE_END.split(text))
    return [s for s in sentences if s]


class Haystack:
    """Filler text for needle prompts: `window(n)` gives exactly n tokens ending at a sentence end.

    label names the text (e.g. "builtin:books" or a file path) in results.
    """

    def __init__(self, tokenizer: Tokenizer, text: str, label: str):
        self.tokenizer, self.label = tokenizer, label
        self.sentences = split_sentences(text)
        if not self.sentences:
            raise NIAHError(f"haystack {label!r} holds no text")
        self._long_numbers = set(_LONG_NUMBER.findall(text))
        self._ids: list[np.ndarray] = []
        self._windows: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # every trial of a length reuses one

    def contains_number(self, number: str) -> bool:
        """Returns True when `number` occurs inside a run of 7 or more digits of the text."""
        return any(number in run for run in self._long_numbers)

    def _sentence(self, i: int) -> np.ndarray:
        """Returns int32 `[n_i]`: the tokens of sentence i, the text repeated past its end."""
        while i >= len(self._ids) and len(self._ids) < len(self.sentences):
            batch = self.sentences[len(self._ids) : len(self._ids) + _ENCODE_BATCH]
            self._ids.extend(ids if len(ids) else np.array([self.tokenizer.unk_id], np.int32)
                             for ids in self.tokenizer.encode_batch(batch))
        return self._ids[i % len(self._ids)]

    def window(self, n_tokens: int) -> tuple[np.ndarray, np.ndarray]:
        """Returns (tokens int32 `[n_tokens]`, boundaries int64 `[k]`).

        The tokens are whole sentences from the start of the text, preceded by the tail of the
        next sentence to fill exactly `n_tokens` (a window that opens mid-sentence and closes
        at a sentence end). Boundaries are the offsets where a needle may go: 0, and every
        offset right after a sentence's last token, `n_tokens` included; sorted, unique.
        """
        if n_tokens < 0:
            raise NIAHError(f"haystack window of {n_tokens} tokens")
        if n_tokens not in self._windows:
            if len(self._windows) >= 16:
                self._windows.clear()
            self._windows[n_tokens] = self._cut(n_tokens)
        return self._windows[n_tokens]

    def _cut(self, n_tokens: int) -> tuple[np.ndarray, np.ndarray]:
        whole, used, i = [], 0, 0
        while used + len(self._sentence(i)) <= n_tokens:
            whole.append(self._sentence(i))
            used += len(whole[-1])
            i += 1
        tail_len = n_tokens - used
        tail = self._sentence(i)[len(self._sentence(i)) - tail_len :] if tail_len else np.zeros(0, np.int32)
        tokens = np.concatenate([tail, *whole]).astype(np.int32)
        ends = tail_len + np.cumsum([0] + [len(s) for s in whole])
        boundaries = np.unique(np.concatenate([[0], ends])).astype(np.int64)
        assert len(tokens) == n_tokens and boundaries[-1] == n_tokens
        tokens.flags.writeable = boundaries.flags.writeable = False  # shared by every caller
        return tokens, boundaries


def load_haystack(tokenizer: Tokenizer, text: str | None = None, label: str | None = None) -> Haystack:
    """Returns a Haystack of `text`; with `text` None, of HELD_OUT (or of the built-in books when
    `label` is BOOKS)."""
    if text is None:
        if label == BOOKS:
            return Haystack(tokenizer, books_text(), BOOKS)
        return Haystack(tokenizer, held_out_text(), HELD_OUT)
    return Haystack(tokenizer, text, label or "text")
