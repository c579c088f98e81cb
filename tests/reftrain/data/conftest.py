"""Fixtures for the data-path tests: the real tokenizer (fetched once) and tiny synthetic corpora."""

from __future__ import annotations

import numpy as np
import pytest

from reftrain.data import Corpus, corpus_from_documents, load_tokenizer


@pytest.fixture(scope="session")
def tokenizer():
    return load_tokenizer()


def unique_corpora(domain_doc_lengths: list[list[int]]) -> list[Corpus]:
    """Returns one Corpus per domain whose tokens are all distinct ids (from 3 up), so every
    token of the packed stream names its domain, document and position."""
    corpora, next_id = [], 3
    for d, lengths in enumerate(domain_doc_lengths):
        docs = []
        for n in lengths:
            docs.append(np.arange(next_id, next_id + n, dtype=np.int32))
            next_id += n
        corpora.append(corpus_from_documents(f"d{d}", docs, [f"d{d}/{i}" for i in range(len(docs))]))
    return corpora
