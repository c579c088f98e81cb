"""reftrain.hf against transformers: logits parity (plain and packed), round trips, refusals.

transformers and torch are imported unconditionally: CI installs the dev extra, and a missing
oracle must fail these tests rather than skip them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import jax
import ml_dtypes
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors.numpy import load_file, save_file
from transformers import MistralConfig, MistralForCausalLM
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from reftrain.config import ARCHITECTURE_FIELDS, Execution, YarnConfig, get_config
from reftrain.hf import (
    CheckpointError,
    config_from_hf,
    config_to_hf,
    inspect_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from reftrain.hf._tensors import rules
from reftrain.model import abstract_params, forward
from reftrain.rope import inverse_frequencies
from reftrain.sharding import make_mesh, param_shardings

HF_SHAPE = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=256,
    rope_theta=31_337.0,
    rms_norm_eps=1e-5,
    sliding_window=None,
)
FLOAT32 = dict(compute_dtype="float32", param_dtype="float32")


def _random_model(seed: int, **overrides) -> MistralForCausalLM:
    """A small float32 Mistral with every weight random (norm scales around 1, not all ones)."""
    torch.manual_seed(seed)
    model = MistralForCausalLM(MistralConfig(**{**HF_SHAPE, **overrides})).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.copy_(1.0 + 0.2 * torch.randn_like(param))
            else:
                param.copy_(0.15 * torch.randn_like(param))
    return model


def _hf_logits(model: MistralForCausalLM, tokens: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor(tokens, dtype=torch.long)).logits.float().numpy()


def _assert_close(ours: np.ndarray, theirs: np.ndarray) -> None:
    scale = max(1.0, float(np.abs(theirs).max()))
    diff = float(np.abs(ours - theirs).max())
    assert diff < 1e-4 * scale, f"max |ours - transformers| = {diff:.3g} at logit scale {scale:.3g}"


def _flat(params) -> dict[str, np.ndarray]:
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in flat}


def _assert_identical(a, b) -> None:
    fa, fb = _flat(a), _flat(b)
    assert fa.keys() == fb.keys()
    for name in fa:
        assert fa[name].dtype == fb[name].dtype, name
        assert fa[name].tobytes() == fb[name].tobytes(), f"{name} differs"


@pytest.fixture(scope="module")
def hf_model() -> MistralForCausalLM:
    return _random_model(0)


@pytest.fixture(scope="module")
def checkpoints(hf_model, tmp_path_factory) -> dict[str, Path]:
    """The same model saved three ways: one file, many small shards, bfloat16."""
    root = tmp_path_factory.mktemp("hf")
    hf_model.save_pretrained(root / "single")
    hf_model.save_pretrained(root / "sharded", max_shard_size="40KB")
    bf16 = _random_model(0).to(torch.bfloat16)
    bf16.save_pretrained(root / "bf16")
    return {"single": root / "single", "sharded": root / "sharded", "bf16": root / "bf16"}


@pytest.fixture(scope="module")
def imported(checkpoints):
    return load_checkpoint(checkpoints["single"], **FLOAT32)


def test_rules_cover_the_model_tree_exactly():
    for tie in (False, True):
        config = get_config("tiny", tie_embeddings=tie)
        flat = jax.tree_util.tree_flatten_with_path(abstract_params(config))[0]
        want = {"/".join(str(k.key) for k in path): leaf.shape for path, leaf in flat}
        assert {"/".join(r.path): r.leaf_shape(config) for r in rules(config)} == want


@given(
    kv_heads=st.integers(1, 3),
    groups=st.integers(1, 3),
    head_dim=st.sampled_from([2, 4, 6]),
    hidden=st.integers(1, 9),
    intermediate=st.integers(1, 9),
)
def test_tensor_rules_invert(kv_heads, groups, head_dim, hidden, intermediate):
    config = get_config("tiny").replace(
        num_kv_heads=kv_heads, num_q_heads=kv_heads * groups, head_dim=head_dim, hidden_size=hidden,
        intermediate_size=intermediate, vocab_size=5,
    )  # fmt: skip
    rng = np.random.default_rng(0)
    for rule in rules(config):
        weight = rng.standard_normal(rule.hf_shape(config)).astype(np.float32)
        ours = rule.to_ours(weight, config)
        assert ours.shape == rule.leaf_shape(config)[1 if rule.layered else 0 :]
        np.testing.assert_array_equal(rule.to_hf(ours, config), weight)


def test_config_from_transformers_save(checkpoints):
    config = inspect_checkpoint(checkpoints["single"]).config
    assert (config.vocab_size, config.hidden_size, config.num_layers) == (128, 64, 2)
    assert (config.num_q_heads, config.num_kv_heads, config.head_dim, config.intermediate_size) == (4, 2, 16, 128)
    assert (config.rope_theta, config.rms_norm_eps, config.tie_embeddings, config.yarn) == (31_337.0, 1e-5, False, None)


def test_sharded_checkpoint_imports_identically(checkpoints, imported):
    assert len(list(checkpoints["sharded"].glob("model-*.safetensors"))) > 2
    config, params = load_checkpoint(checkpoints["sharded"], **FLOAT32)
    assert config == imported[0]
    _assert_identical(params, imported[1])


def test_logits_match_transformers(hf_model, imported):
    config, params = imported
    tokens = np.random.default_rng(1).integers(0, config.vocab_size, (2, 48))
    _assert_close(np.asarray(forward(config, params, tokens)), _hf_logits(hf_model, tokens))


def test_packed_logits_match_each_document_alone(hf_model, imported):
    """Three documents and padding in one row vs transformers on each document by itself."""
    config, params = imported
    rng = np.random.default_rng(2)
    lengths, padding = (17, 9, 11), 3
    documents = [rng.integers(0, config.vocab_size, n) for n in lengths]
    tokens = np.concatenate([*documents, np.zeros(padding, int)])[None]
    segment_ids = np.concatenate([np.full(n, i + 1) for i, n in enumerate(lengths)] + [np.zeros(padding, int)])[None]
    positions = np.concatenate([np.arange(n) for n in lengths] + [np.zeros(padding, int)])[None]
    logits = np.asarray(forward(config, params, tokens, positions=positions, segment_ids=segment_ids))
    start = 0
    for document in documents:
        _assert_close(logits[0, start : start + len(document)], _hf_logits(hf_model, document[None])[0])
        start += len(document)


def test_bfloat16_checkpoint_is_exact(checkpoints):
    hf = load_file(checkpoints["bf16"] / "model.safetensors")
    assert hf["model.layers.1.self_attn.q_proj.weight"].dtype == ml_dtypes.bfloat16
    config, params = load_checkpoint(checkpoints["bf16"], param_dtype="bfloat16")
    q = hf["model.layers.1.self_attn.q_proj.weight"]
    np.testing.assert_array_equal(np.asarray(params["layers"]["attn"]["q"]["kernel"][1]), q.T.reshape(64, 4, 16))
    _, params32 = load_checkpoint(checkpoints["bf16"], param_dtype="float32")
    _assert_identical(jax.tree.map(lambda x: x.astype(np.float32), params), params32)


def test_float32_export_import_is_bit_identical(imported, tmp_path):
    config, params = imported
    config = config.replace(name="roundtrip", q_chunk=16, kv_chunk=32, remat_policy="save_dots")
    save_checkpoint(config, params, tmp_path / "out", dtype="float32", max_shard_bytes=30_000)
    assert len(list((tmp_path / "out").glob("model-*-of-*.safetensors"))) > 2
    config2, params2 = load_checkpoint(tmp_path / "out")
    # The architecture (and name and RoPE numerics) round-trip; how it ran is a plan's, not the checkpoint's.
    assert config2 == config.with_execution(Execution()) and config2.name == "roundtrip"
    assert "q_chunk" not in json.loads((tmp_path / "out" / "config.json").read_text())["reftrain"]
    _assert_identical(params2, params)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging directory left behind


def test_export_loads_in_transformers(hf_model, imported, tmp_path):
    config, params = imported
    save_checkpoint(config, params, tmp_path / "f32", dtype="float32")
    save_checkpoint(config, params, tmp_path / "bf16")
    tokens = np.random.default_rng(3).integers(0, config.vocab_size, (1, 24))
    reloaded = MistralForCausalLM.from_pretrained(tmp_path / "f32", dtype=torch.float32).eval()
    assert reloaded.config.sliding_window is None
    np.testing.assert_array_equal(_hf_logits(reloaded, tokens), _hf_logits(hf_model, tokens))
    bf16 = MistralForCausalLM.from_pretrained(tmp_path / "bf16").eval()
    assert bf16.dtype == torch.bfloat16
    _, params_bf16 = load_checkpoint(tmp_path / "bf16", param_dtype="bfloat16")
    _assert_identical(params_bf16, jax.tree.map(lambda x: x.astype(jax.numpy.bfloat16), params))


def test_tied_embeddings(tmp_path):
    model = _random_model(4, tie_word_embeddings=True)
    model.save_pretrained(tmp_path / "tied")
    config, params = load_checkpoint(tmp_path / "tied", **FLOAT32)
    assert config.tie_embeddings and "lm_head" not in params
    tokens = np.random.default_rng(4).integers(0, config.vocab_size, (1, 16))
    _assert_close(np.asarray(forward(config, params, tokens)), _hf_logits(model, tokens))


def test_load_with_mesh_places_each_leaf(checkpoints, imported):
    mesh = make_mesh(fsdp=2, tp=2, sp=2)
    _, params = load_checkpoint(checkpoints["sharded"], mesh=mesh, **FLOAT32)
    want = param_shardings(params, mesh)
    for leaf, sharding in zip(jax.tree.leaves(params), jax.tree.leaves(want)):
        assert leaf.sharding.is_equivalent_to(sharding, leaf.ndim)
    _assert_identical(params, imported[1])


def _hf_dict(**changes) -> dict:
    return {"model_type": "mistral", **HF_SHAPE, **changes}


def test_yarn_maps_both_ways():
    v4 = _hf_dict(
        max_position_embeddings=131_072,
        rope_scaling={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32_768,
                      "beta_fast": 16, "beta_slow": 2},  # fmt: skip
    )
    config = config_from_hf(v4)
    assert config.yarn == YarnConfig(factor=4.0, original_length=32_768, alpha=2.0, beta=16.0, ramp="index")
    v5 = _hf_dict(rope_parameters={"rope_type": "yarn", "rope_theta": 31_337.0, "factor": 4.0,
                                   "original_max_position_embeddings": 32_768, "beta_fast": 16, "beta_slow": 2})  # fmt: skip
    assert config_from_hf(v5) == config
    exported = config_to_hf(config)
    assert exported["max_position_embeddings"] == 131_072 and exported["rope_parameters"]["rope_type"] == "yarn"
    assert config_from_hf(exported) == config
    assert MistralConfig(**exported).rope_parameters["beta_fast"] == 16  # transformers reads what we write


def test_yarn_frequencies_match_transformers():
    hf = MistralConfig(**{**HF_SHAPE, "head_dim": 128, "hidden_size": 512, "max_position_embeddings": 131_072},
                       rope_parameters={"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0,
                                        "original_max_position_embeddings": 32_768})  # fmt: skip
    theirs, attention_factor = ROPE_INIT_FUNCTIONS["yarn"](hf, "cpu")
    config = config_from_hf(hf.to_dict())
    assert attention_factor == pytest.approx(config.yarn.mscale)
    assert config.yarn.ramp == "index"
    ours = inverse_frequencies(config.head_dim, config.rope_theta, config.yarn)
    np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-6)
    paper = inverse_frequencies(config.head_dim, config.rope_theta, dataclasses.replace(config.yarn, ramp="rotations"))
    assert np.max(np.abs(paper / theirs.numpy() - 1)) > 0.1, "the paper's ramp is a different model"
    with pytest.raises(CheckpointError, match="cannot export YaRN with ramp='rotations'"):
        config_to_hf(config.replace(yarn=dataclasses.replace(config.yarn, ramp="rotations")))


@pytest.mark.parametrize("rope_type", ["linear", "dynamic", "llama3", "longrope"])
def test_other_rope_scaling_is_refused(rope_type):
    with pytest.raises(CheckpointError, match=f"rope_scaling type '{rope_type}' is not supported"):
        config_from_hf(_hf_dict(rope_scaling={"rope_type": rope_type, "factor": 2.0}))


def test_sliding_window_is_refused_unless_allowed():
    with pytest.raises(CheckpointError, match="sliding_window=64 is smaller than max_position_embeddings=256"):
        config_from_hf(_hf_dict(sliding_window=64))
    assert config_from_hf(_hf_dict(sliding_window=64), allow_sliding_window=True).num_layers == 2
    assert config_from_hf(_hf_dict(sliding_window=256)).num_layers == 2  # covers the whole context
    defaults = {k: v for k, v in _hf_dict().items() if k not in ("sliding_window", "max_position_embeddings")}
    with pytest.raises(CheckpointError, match="sliding_window=4096 is smaller than max_position_embeddings=131072"):
        config_from_hf(defaults)  # what transformers assumes when config.json says nothing


def _tampered(source: Path, target: Path, edit) -> Path:
    """Copies a single-file checkpoint to `target`, applying `edit` to its tensor dict."""
    target.mkdir()
    (target / "config.json").write_text((source / "config.json").read_text())
    tensors = load_file(source / "model.safetensors")
    edit(tensors)
    save_file(tensors, target / "model.safetensors", metadata={"format": "pt"})
    return target


def test_misshaped_tensor_is_named_with_both_shapes(checkpoints, tmp_path):
    name = "model.layers.1.self_attn.k_proj.weight"
    bad = _tampered(checkpoints["single"], tmp_path / "bad", lambda t: t.update({name: t[name][:16]}))
    message = rf"tensor {name} in model.safetensors has shape \[16, 64\], the config implies \[32, 64\]"
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(bad)


def test_missing_and_unexpected_tensors_are_named(checkpoints, tmp_path):
    name = "model.layers.0.mlp.up_proj.weight"
    missing = _tampered(checkpoints["single"], tmp_path / "missing", lambda t: t.pop(name))
    with pytest.raises(CheckpointError, match=rf"missing tensor {name}, expected shape \[128, 64\]"):
        load_checkpoint(missing)
    extra_name = "model.layers.2.mlp.up_proj.weight"
    extra = _tampered(checkpoints["single"], tmp_path / "extra", lambda t: t.update({extra_name: t[name]}))
    with pytest.raises(CheckpointError, match=r"unexpected tensor model.layers.2.mlp.up_proj.weight"):
        load_checkpoint(extra)


def test_export_refuses_nonempty_target_and_never_half_writes(imported, tmp_path, monkeypatch):
    config, params = imported
    target = tmp_path / "ckpt"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match="exists and is not empty; pass overwrite=True"):
        save_checkpoint(config, params, target)

    import reftrain.hf._save as save_module

    calls = []

    def failing_save_file(tensors, file, metadata=None):
        calls.append(file)
        if len(calls) == 2:
            raise OSError("disk full")
        save_file(tensors, file, metadata=metadata)

    monkeypatch.setattr(save_module, "save_file", failing_save_file)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(config, params, target, overwrite=True, max_shard_bytes=30_000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    assert [p.name for p in target.iterdir()] == ["notes.txt"]
    monkeypatch.undo()
    save_checkpoint(config, params, target, overwrite=True)
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # the replaced directory is gone


def test_export_checks_param_shapes(imported, tmp_path):
    config, params = imported
    message = r"params leaf layers/mlp/gate/kernel has shape \[2, 64, 128\], the config implies \[2, 64, 96\]"
    with pytest.raises(CheckpointError, match=message):
        save_checkpoint(config.replace(intermediate_size=96), params, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    return subprocess.run([sys.executable, "-m", "reftrain.hf", *args], capture_output=True, text=True, env=env)


def test_cli_info(checkpoints, tmp_path):
    result = _cli("info", str(checkpoints["sharded"]))
    assert result.returncode == 0, result.stderr
    count = sum(math.prod(t.shape) for t in load_file(checkpoints["single"] / "model.safetensors").values())
    assert f"parameters        {count:,}" in result.stdout
    assert "rope_theta        31337.0" in result.stdout
    bad = _cli("info", str(tmp_path))
    assert (bad.returncode, _error_lines(bad)) == (2, [f"error: {tmp_path} has no config.json"])
    (tmp_path / "config.json").write_text(json.dumps(_hf_dict(sliding_window=8)))
    bad = _cli("info", str(tmp_path))
    assert bad.returncode == 2 and len(_error_lines(bad)) == 1 and "sliding_window=8 is smaller" in bad.stderr


def _error_lines(result: subprocess.CompletedProcess) -> list[str]:
    """stderr without the absl/XLA start-up chatter some jax plugins print on import."""
    lines = result.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("error: ")
    return [line for line in lines if not line.startswith(("WARNING: All log messages", "I0000", "W0000", "E0000"))]


def test_every_architecture_field_round_trips_through_config_json():
    """A field added to the architecture without its config.json key would be lost on export."""
    base = get_config("tiny")
    changed = base.replace(vocab_size=1000, hidden_size=96, num_layers=3, num_q_heads=6, num_kv_heads=3, head_dim=16,
                           intermediate_size=200, rms_norm_eps=3e-6, tie_embeddings=True, rope_theta=5e5,
                           yarn=YarnConfig(factor=2.0, original_length=4096, ramp="index"), initializer_range=0.05)
    assert all(getattr(changed, name) != getattr(base, name) for name in ARCHITECTURE_FIELDS)
    back = config_from_hf(json.loads(json.dumps(config_to_hf(changed))))
    assert {name: getattr(back, name) for name in ARCHITECTURE_FIELDS} == {name: getattr(changed, name) for name in ARCHITECTURE_FIELDS}
