"""SentencePiece tokenizer: Mistral-7B v0.1/v0.2 by default, any `.model` file on request."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from reftrain.data._cache import DataError, sha256_file

BUILTIN_TOKENIZER = "builtin:mistral-7b-v0.1"


@dataclass(frozen=True)
class Tokenizer:
    """A loaded SentencePiece model with the ids the packer needs.

    `sha256` identifies the model file; tokenized-corpus cache entries are keyed by it.
    """

    path: Path
    sha256: str
    vocab_size: int
    bos_id: int
    eos_id: int
    unk_id: int
    _sp: object = field(repr=False, compare=False)

    def encode(self, text: str) -> np.ndarray:
        """Returns int32 `[n]`: the ids of `text`, without bos/eos."""
        return np.asarray(self._sp.encode(text), dtype=np.int32)

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        """Returns one int32 `[n_i]` array per text, encoded on all cores."""
        ids = self._sp.encode(texts, num_threads=os.cpu_count() or 1)
        return [np.asarray(x, dtype=np.int32) for x in ids]

    def decode(self, ids) -> str:
        """Returns the text of `ids` (any int sequence; bos/eos decode to nothing)."""
        return self._sp.decode([int(i) for i in ids])

    def piece(self, token_id: int) -> str:
        return self._sp.id_to_piece(int(token_id))


def load_tokenizer(path: str | os.PathLike | None = None) -> Tokenizer:
    """Returns the tokenizer at `path`, or Mistral-7B's (fetched once from PyPI) for None.

    `path` may also be the string "builtin:mistral-7b-v0.1". Raises DataError for a missing or
    unreadable file.
    """
    import sentencepiece as spm

    from reftrain.data._fetch import ensure_tokenizer_model

    if path is None or str(path) == BUILTIN_TOKENIZER:
        model = ensure_tokenizer_model()
    else:
        model = Path(path).expanduser()
        if not model.is_file():
            raise DataError(f"tokenizer model {str(path)!r} is not a file (give a SentencePiece .model)")
    try:
        sp = spm.SentencePieceProcessor(model_file=str(model))
    except (RuntimeError, OSError) as err:
        raise DataError(f"tokenizer model {str(model)!r} is not a SentencePiece model: {err}") from None
    if sp.bos_id() < 0 or sp.eos_id() < 0:
        raise DataError(f"tokenizer model {str(model)!r} has no bos/eos pieces; the packer needs both")
    return Tokenizer(
        path=model,
        sha256=sha256_file(model),
        vocab_size=sp.vocab_size(),
        bos_id=sp.bos_id(),
        eos_id=sp.eos_id(),
        unk_id=sp.unk_id(),
        _sp=sp,
    )
