"""Attention with GQA and document masks: a dense reference, a blockwise and a ring version.

All three take q `[batch, len, q_heads, head_dim]`, k and v `[batch, len, kv_heads, head_dim]`
(`q_heads % kv_heads == 0`, kv never repeated), optional int32 `segment_ids` `[batch, len]`
(documents from 1, 0 for padding) and compute the same result.
"""

from reftrain.attention._block import BlockMask, block_backward, block_forward, merge_blocks
from reftrain.attention._dense import dense_attention
from reftrain.attention._masks import attention_mask
from reftrain.attention._ring import blockwise_attention, ring_attention

__all__ = [
    "BlockMask",
    "attention_mask",
    "block_backward",
    "block_forward",
    "blockwise_attention",
    "dense_attention",
    "merge_blocks",
    "ring_attention",
]
