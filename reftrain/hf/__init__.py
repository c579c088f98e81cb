"""Hugging Face Mistral checkpoints: import into (ModelConfig, params) and export back.

    config, params = load_checkpoint("Mistral-7B-Instruct-v0.2", mesh=mesh, compute_dtype="bfloat16")
    save_checkpoint(config, params, "out/phase4-hf", dtype="bfloat16")

A checkpoint directory holds config.json and `model.safetensors` or sharded
`model-0000k-of-0000n.safetensors` with `model.safetensors.index.json`, exactly as
`MistralForCausalLM.save_pretrained` writes it. `python -m reftrain.hf info DIR` prints what a
directory holds without loading it. See docs/hf.md.
"""

from reftrain.hf._config import CheckpointError, config_from_hf, config_to_hf
from reftrain.hf._load import CheckpointInfo, inspect_checkpoint, load_checkpoint
from reftrain.hf._save import DEFAULT_MAX_SHARD_BYTES, save_checkpoint

__all__ = [
    "DEFAULT_MAX_SHARD_BYTES",
    "CheckpointError",
    "CheckpointInfo",
    "config_from_hf",
    "config_to_hf",
    "inspect_checkpoint",
    "load_checkpoint",
    "save_checkpoint",
]
