"""The one parameter and FLOPs formula of this repository (no jax: hloscope imports it).

Two counts are built from the same pieces (`matmul_parameters`, `attention_flops`):
- model FLOPs, for MFU (reftrain.train.metrics, analyses/bench_train.py,
  analyses/ring_vs_ulysses.py): per trained token 6 x matmul parameters + causal attention,
  the backward counted as twice the forward and no rematerialisation. Attention is counted
  within documents where a row holds several (`attended_length`), so MFU never counts work
  the mask skips;
- executed FLOPs, for hloscope's speed model (hloscope/programs/train_step_speed.py) and
  analyses/bench_attention.py: recompute included and attention's backward priced at
  BACKWARD_OVER_FORWARD forwards (five matmuls to the forward's two).
"""

from __future__ import annotations

import numpy as np

from reftrain.config import ModelConfig

#: Dense bf16 peak FLOP/s per device, by `device_kind` prefix (vendor datasheets).
PEAK_FLOPS = {"NVIDIA A100": 312e12, "NVIDIA H100": 989e12, "NVIDIA H200": 989e12, "NVIDIA B200": 2250e12}


def projection_parameters(config: ModelConfig) -> dict[str, int]:
    """Parameters of each matmul of one decoder layer, by name: q, k, v, o and the gated MLP's
    gate, up, down (hloscope's speed model prices the ones a remat policy runs again)."""
    c = config
    attention, mlp = c.hidden_size * c.head_dim, c.hidden_size * c.intermediate_size
    return {"q": attention * c.num_q_heads, "k": attention * c.num_kv_heads, "v": attention * c.num_kv_heads,
            "o": attention * c.num_q_heads, "gate": mlp, "up": mlp, "down": mlp}


def layer_matmul_parameters(config: ModelConfig) -> int:
    """Matmul parameters of one decoder layer: q, k, v, o projections and the gated MLP."""
    return sum(projection_parameters(config).values())


def layer_parameters(config: ModelConfig) -> int:
    """All parameters of one decoder layer: its matmuls and its two RMSNorm scales."""
    return layer_matmul_parameters(config) + 2 * config.hidden_size


def matmul_parameters(config: ModelConfig) -> int:
    """Parameters that cost 2 FLOPs per token forward: every layer's matmuls and the output head
    (the embedding is a lookup; a tied head is still a matmul)."""
    return config.num_layers * layer_matmul_parameters(config) + config.hidden_size * config.vocab_size


def parameter_count(config: ModelConfig) -> int:
    """Every parameter: layers, embedding, output head (unless tied) and the final norm."""
    heads = 1 if config.tie_embeddings else 2
    return config.num_layers * layer_parameters(config) + heads * config.vocab_size * config.hidden_size + config.hidden_size


def documents_attended_length(document_lengths, row_length: int) -> float:
    """The length to count causal attention over for one row holding documents of
    `document_lengths` tokens: sum(n^2) / row length (a row that is one document gives its
    length; padding adds nothing). `train_flops_per_token` takes it, so that MFU counts only
    the attention the mask lets through (cuDNN's packed mode skips the rest)."""
    return float(sum(float(n) ** 2 for n in document_lengths)) / row_length


def attended_length(segment_ids) -> float:
    """`documents_attended_length` averaged over the rows of `segment_ids` `[..., length]`,
    whose documents are the runs of one non-zero id (0 is padding)."""
    ids = np.asarray(segment_ids)
    rows = ids.reshape(-1, ids.shape[-1])
    if rows.shape[0] == 0 or rows.shape[1] == 0:
        return 0.0
    return sum(documents_attended_length(row_documents(row)[0], row.size) for row in rows) / rows.shape[0]


def row_documents(row) -> tuple[list[int], int]:
    """(the document lengths of one row of segment ids `[length]`, in order; its padding tokens):
    a document is a run of one non-zero id, 0 is padding."""
    row = np.asarray(row)
    starts = np.flatnonzero(np.diff(row, prepend=row[0] - 1))  # where a run of equal ids begins
    lengths = np.diff(np.append(starts, row.size))
    return lengths[row[starts] != 0].tolist(), int(lengths[row[starts] == 0].sum())


#: Attention's backward in forward passes: five matmuls to the forward's two (executed FLOPs).
BACKWARD_OVER_FORWARD = 2.5


def attention_flops(pairs: float, q_heads: float, head_dim: int, passes: float) -> float:
    """FLOPs of `passes` forward passes of one layer's attention over `pairs` attended (query,
    key) pairs: 4 x q_heads x head_dim a pair and pass (QK^T and PV, 2 FLOPs a multiply-add)."""
    return 4.0 * pairs * q_heads * head_dim * passes


def attention_flops_per_token(config: ModelConfig, attended: float) -> float:
    """Causal attention model FLOPs to train on one token: `attended` / 2 pairs per layer, a
    forward and a backward of twice it, which is 6 x layers x q_heads x head_dim x `attended`
    (PaLM's 12 L H Dh S halved for the causal mask; `attended` is the sequence length for one
    document a row, `attended_length` for packed documents)."""
    return config.num_layers * attention_flops(attended / 2, config.num_q_heads, config.head_dim, passes=3)


def train_flops_per_token(config: ModelConfig, attended: float) -> float:
    """Model FLOPs to train on one token (no rematerialisation counted): 6 x matmul parameters
    plus causal attention over `attended` keys (see `attention_flops_per_token`).

    The trainer's MFU, analyses/bench_train.py and analyses/ring_vs_ulysses.py use it."""
    return 6.0 * matmul_parameters(config) + attention_flops_per_token(config, attended)


def peak_flops_of_kind(device_kind: str) -> float | None:
    """Peak FLOP/s of a `device_kind` ("NVIDIA H100 80GB HBM3") from the table; None when unknown."""
    return next((flops for prefix, flops in PEAK_FLOPS.items() if device_kind.startswith(prefix)), None)
