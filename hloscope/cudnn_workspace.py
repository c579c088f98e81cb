"""cuDNN attention workspace for deviceless compiles.

XLA:GPU asks cuDNN how much scratch memory each fused-attention call needs and writes it
into the call's last result (`u8[N]`), which buffer assignment then places like any other
temporary. A compile-only device has no cuDNN to ask, so the call keeps jax's placeholder,
`u8[0]`, and the prediction misses it: 16 GiB of 17.4 on a 32K attention step with packed
documents (`analyses/results/hloscope_vs_gpu.md` before this model).

`inject(lowered)` writes the modelled size into each cuDNN call of the lowered module before
it compiles, so XLA itself places the workspace where the real compile would. The model is
fitted to what XLA gave on an H100 (jax 0.11.2, cuDNN 9) for 40 shapes
(`analyses/gpu_probe_cudnn_workspace.py` -> `analyses/results/cudnn_workspace_h100.json`):

* forward: 256 bytes, 17,152 with packed documents;
* backward: float32 dQ accumulators for every *sequence* cuDNN sees, a second set when
  K/V have fewer heads than Q (GQA), and the softmax sums:
  (2 if GQA else 1) * S * T * Hq * D * 4 + S * T * Hq * 4 + 256 * (S + 30) bytes, where
  S = batch * max_documents in packed mode (each document a padded sequence of the full
  length T): this is why packed memory grows with max_documents.

reftrain's cuDNN kernel (`reftrain/attention/_cudnn.py`) calls it with S = batch * max_documents
for a shard with itself (a shard with more documents runs more calls of that same shape, in
turn), S = batch * 2 for an earlier shard's shared document, and T = document_block when a
shard with itself runs in blocks: the model needs nothing per case, it reads S and T from the
call's statistics.
"""

from __future__ import annotations

from typing import Any

FORWARD = "__cudnn$fmhaSoftmax"
BACKWARD = "__cudnn$fmhaSoftmaxBackward"
_FORWARD_BYTES, _FORWARD_PACKED_BYTES = 256, 17_152


def forward_bytes(batch: int, sequences: int) -> int:
    return _FORWARD_PACKED_BYTES if sequences != batch else _FORWARD_BYTES


def backward_bytes(sequences: int, length: int, q_heads: int, head_dim: int, gqa: bool) -> int:
    accumulators = (2 if gqa else 1) * sequences * length * q_heads * head_dim * 4
    return accumulators + sequences * length * q_heads * 4 + 256 * (sequences + 30)


def _dims(value_type: Any) -> list[int]:
    from jax._src.lib.mlir import ir

    return [int(d) for d in ir.ShapedType(value_type).shape]


def _gqa(q: list[int], k: list[int], q_heads: int) -> bool:
    """Whether K has fewer heads than Q (heads are axis 2 in jax's BTNH layout, 1 in BNTH)."""
    axis = 2 if q[2] == q_heads else 1
    return k[axis] != q[axis]


def modelled_bytes(target: str, operand_shapes: list[list[int]], result_shapes: list[list[int]]) -> int | None:
    """The workspace of one cuDNN attention call from its operand and result shapes (q, k, v
    first; the softmax statistics `[S, Hq, T]` are the forward's second result and the
    backward's only rank-3 operand). None for a call this model does not know."""
    q, k = operand_shapes[0], operand_shapes[1]
    if target == BACKWARD:
        stats = [s for s in operand_shapes[3:] if len(s) == 3]
        if len(stats) != 1:
            return None
        sequences, q_heads, length = stats[0]
        return backward_bytes(sequences, length, q_heads, q[-1], _gqa(q, k, q_heads))
    if target == FORWARD and len(result_shapes) == 3 and len(result_shapes[1]) == 3:
        return forward_bytes(q[0], result_shapes[1][0])
    return None


def _custom_calls(operation: Any):
    for region in operation.regions:
        for block in region.blocks:
            for op in block.operations:
                op = op.operation
                if op.name == "stablehlo.custom_call":
                    yield op
                yield from _custom_calls(op)


def inject(lowered: Any) -> list[dict[str, Any]]:
    """Gives every cuDNN attention call of `lowered` (a jax.stages.Lowered, before compile) that
    still has jax's empty workspace the modelled one; returns [{call, bytes}] of those it set."""
    from jax._src.lib.mlir import ir

    module = lowered._lowering.stablehlo()  # the module compile() will use (not a copy)
    changed = []
    with module.context, ir.Location.unknown():
        for op in _custom_calls(module.operation):
            target = ir.StringAttr(op.attributes["call_target_name"]).value
            if target not in (FORWARD, BACKWARD):
                continue
            workspace = op.results[len(op.results) - 1]
            if _dims(workspace.type) != [0]:
                continue
            size = modelled_bytes(target, [_dims(o.type) for o in op.operands], [_dims(r.type) for r in op.results])
            if size is None:
                continue
            workspace.set_type(ir.RankedTensorType.get([size], ir.IntegerType.get_unsigned(8)))
            changed.append({"call": target, "bytes": size})
    return changed

