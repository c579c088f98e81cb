"""hloscope.programs.train_step_speed counts the cuDNN calls, and the slots they pad, that reftrain's kernel makes.

The oracle is the kernel itself: our cuDNN kernel around the CPU double of cuDNN's primitives,
each primitive reporting from inside the compiled step (`jax.debug.callback`) how many slots it
was given over how many queries. The model never sees the kernel's loops; it counts from the
row's document lengths alone, which is all `hloscope search` and `plan_on_gpus.py` have.
"""

from __future__ import annotations

from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from hloscope.programs.train_step_speed import _cudnn_calls
from reftrain.attention import _ring, blockwise_attention
from reftrain.attention._cudnn import Primitives, cudnn_kernel
from reftrain.config import get_config
from tests.reftrain.cudnn_double import PRIMITIVES

LENGTH = 512


def _counting_primitives(calls: list):
    """The CPU double, noting (pass, slots, queries) of every call it runs."""
    def noted(name, primitive, sequences_at):
        def call(*args):
            q, sequences = args[0], args[sequences_at]
            slots = 1 if sequences is None else sequences[0].shape[1]
            jax.debug.callback(lambda: calls.append((name, slots, q.shape[1])))
            return primitive(*args)
        return call

    return Primitives(noted("forward", PRIMITIVES.forward, 5), noted("backward", PRIMITIVES.backward, 8))


def _kernel_calls(lengths: list[int], max_documents: int, document_block: int) -> list:
    """Every primitive call of one forward and backward of `lengths` documents, then padding."""
    ids = np.zeros(LENGTH, np.int32)
    ids[:sum(lengths)] = np.repeat(np.arange(1, len(lengths) + 1), lengths)
    keys = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(keys[0], (1, LENGTH, 2, 8))
    k, v = (jax.random.normal(key, (1, LENGTH, 1, 8)) for key in keys[1:])
    calls = []
    attention = lambda q, k, v: blockwise_attention(q, k, v, segment_ids=jnp.asarray(ids[None]), q_chunk=64, kv_chunk=64,
                                                    kernel="cudnn", max_documents=max_documents,
                                                    document_block=document_block)
    with mock.patch.dict(_ring._KERNELS, cudnn=lambda spec: cudnn_kernel(spec, _counting_primitives(calls))):
        grads = jax.jit(jax.grad(lambda q, k, v: jnp.sum(attention(q, k, v)), argnums=(0, 1, 2)))(q, k, v)
        jax.block_until_ready(grads)
    return calls


@given(lengths=st.lists(st.integers(1, 24).map(lambda n: 16 * n), min_size=1, max_size=24),
       padding=st.booleans(), max_documents=st.sampled_from([1, 2, 4]), document_block=st.sampled_from([0, 128, 256]))
def test_calls_and_padded_slots_are_the_kernels(lengths, padding, max_documents, document_block):
    """Documents of 16-384 tokens filling a 512-token row (cut at the end), or leaving a tail of
    padding: forward calls, backward calls and the backward's slots x queries all match."""
    documents = list(np.diff(np.minimum(np.cumsum([0] + lengths), LENGTH - (64 if padding else 0))))
    documents = [int(n) for n in documents if n > 0]
    config = get_config("tiny", max_documents=max_documents, document_block=document_block)
    calls, padded = _cudnn_calls(config, LENGTH, 1, documents)
    made = _kernel_calls(documents, max_documents, document_block)
    forward = [c for c in made if c[0] == "forward"]
    backward = [c for c in made if c[0] == "backward"]
    assert len(forward) == len(backward) == calls
    assert sum(slots * queries for _, slots, queries in backward) == padded


def test_a_row_without_segment_ids_is_one_call_that_pads_nothing():
    assert _cudnn_calls(get_config("tiny"), LENGTH, 1, None) == (1, 0)
    assert _cudnn_calls(get_config("tiny"), LENGTH, 4, None) == (4, 0)  # one a ring step
