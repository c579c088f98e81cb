"""The options of the `attention` and `paper-attention` programs (no jax here)."""

from __future__ import annotations

from dataclasses import dataclass

from reftrain.execution import Execution

_RUNS = Execution()  # reftrain's defaults, written there once


@dataclass(frozen=True)
class AttentionShape:
    """A sequence-parallel attention problem; every field is a CLI flag of `hloscope profile`."""

    seq: int = 524_288
    q_chunk: int = 2048
    kv_chunk: int | None = None  # None: twice q_chunk, as in both of the paper's configurations
    batch: int = 1
    q_heads: int = 32
    kv_heads: int = 8
    head_dim: int = 128
    dtype: str = "bfloat16"
    document_block: int = _RUNS.document_block  # cuDNN with documents: blocks of a shard with itself (0: one call)
    kernel: str = _RUNS.attention_kernel  # reftrain's attention kernel; auto: cuDNN for a GPU target, else xla

    def resolved(self) -> "AttentionShape":
        """Returns a copy with kv_chunk filled in."""
        kv_chunk = 2 * self.q_chunk if self.kv_chunk is None else self.kv_chunk
        return AttentionShape(**{**self.__dict__, "kv_chunk": kv_chunk})

    def validate(self, devices: int) -> None:
        """Raises ValueError naming the numbers when the shape cannot be split as asked."""
        shape = self.resolved()
        if devices <= 0:
            raise ValueError(f"--devices must be positive, got {devices}")
        if shape.seq <= 0 or shape.seq % devices:
            raise ValueError(f"--seq {shape.seq} is not divisible by --devices {devices}")
        local = shape.seq // devices
        for flag, chunk in (("--q-chunk", shape.q_chunk), ("--kv-chunk", shape.kv_chunk)):
            if chunk <= 0 or local % chunk:
                raise ValueError(f"{flag} {chunk} does not divide the local length {local} (= {shape.seq} / {devices})")
        if shape.q_heads % shape.kv_heads:
            raise ValueError(f"--q-heads {shape.q_heads} is not a multiple of --kv-heads {shape.kv_heads}")
        if shape.dtype not in ("bfloat16", "float16", "float32"):
            raise ValueError(f"--dtype {shape.dtype} is not one of bfloat16, float16, float32")
        # The kernel name is checked by reftrain's resolve_kernel when the program is built.
        if shape.document_block < 0:
            raise ValueError(f"--document-block must be >= 0, got {shape.document_block}")


def sequence_mesh(devices: int, **_: object) -> dict[str, int]:
    """The attention programs' default mesh: one `sp` axis over every device."""
    return {"sp": devices}
