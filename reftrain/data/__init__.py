"""reftrain.data: MegaBeam's data path: tokenizer, domain mixture, packing, synthetic long QA.

A batch is a dict of numpy arrays, each `[rows, seq_len]`:
    tokens, targets, segment_ids, positions: int32; loss_mask: float32 (0/1).
targets[t] is the next token of the same document; segment ids number documents (pieces)
from 1 within a row, 0 is padding; positions restart at 0 per piece (mode "document") or
run along the row (mode "concat", UltraLong). See docs/data.md.

    from reftrain.data import DEFAULT_SPEC, make_batches, make_qa_batches
    batches = make_batches(DEFAULT_SPEC, batch_size=8, seq_len=8192, host_index=0, host_count=1)
    batch = next(batches); state = batches.get_state()   # JSON-serialisable
    batches.set_state(state)                               # continues the same stream
"""

from reftrain.data._babi import TASKS as BABI_TASKS
from reftrain.data._babi import Story, babi_story
from reftrain.data._builtin import BUILTIN_SOURCES
from reftrain.data._cache import DataError, cache_dir
from reftrain.data._corpus import Corpus, corpus_from_documents, tokenized_source
from reftrain.data._fetch import ensure_shakespeare, ensure_tokenizer_model
from reftrain.data._iterator import BatchIterator, load_corpora, make_batches, seq_len_schedule
from reftrain.data._mix import InterleavedBatches
from reftrain.data._packing import Piece, StreamPacker, row_arrays
from reftrain.data._qa import QABatchIterator, QASample, make_qa_batches, make_qa_sample
from reftrain.data._recall import RecallBatchIterator, recall_document
from reftrain.data._qa_pairs import KNOWN_QA_KINDS, QA_KINDS, QAPair, code_default_pairs, speaker_pairs
from reftrain.data._spec import (
    DEFAULT_SPEC,
    DataSpec,
    DomainSpec,
    PackingSpec,
    SeqStage,
    load_spec,
    spec_from_dict,
)
from reftrain.data._tokenizer import BUILTIN_TOKENIZER, Tokenizer, load_tokenizer

__all__ = [
    "BABI_TASKS", "BUILTIN_SOURCES", "BUILTIN_TOKENIZER", "BatchIterator", "Corpus", "DEFAULT_SPEC",
    "DataError", "DataSpec", "DomainSpec", "InterleavedBatches", "KNOWN_QA_KINDS", "PackingSpec", "Piece",
    "QABatchIterator", "QAPair",
    "QASample", "QA_KINDS", "RecallBatchIterator", "SeqStage", "Story", "StreamPacker", "Tokenizer", "babi_story",
    "cache_dir", "code_default_pairs", "corpus_from_documents", "ensure_shakespeare", "ensure_tokenizer_model",
    "load_corpora", "load_spec", "load_tokenizer", "make_batches", "make_qa_batches",
    "make_qa_sample", "recall_document", "row_arrays", "seq_len_schedule", "speaker_pairs", "spec_from_dict",
    "tokenized_source",
]
