"""The Mistral model: sharded ring path == single-device path, remat and chunking change nothing."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reftrain import model
from reftrain.config import get_config
from reftrain.sharding import make_mesh, param_report, param_shardings

LENGTH = 64


def small_config(**overrides):
    values = dict(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_q_heads=4,
        num_kv_heads=2,
        head_dim=16,
        compute_dtype="float32",
        q_chunk=4,
        kv_chunk=8,
        loss_chunk=4,
        mlp_chunk=4,
        rope_theta=25e6,
    )
    return get_config("tiny", **{**values, **overrides})


def packed_batch(batch: int = 2, length: int = LENGTH, seed: int = 0) -> dict[str, jax.Array]:
    """Rows of three documents (lengths differ per row) and trailing padding."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, 256, (batch, length))
    segment_ids = np.zeros((batch, length), np.int32)
    positions = np.zeros((batch, length), np.int32)
    for row in range(batch):
        cuts = np.sort(rng.choice(np.arange(4, length - 4), 3, replace=False))
        starts, ends = np.r_[0, cuts[:2]], cuts
        for doc, (start, end) in enumerate(zip(starts, ends), 1):
            segment_ids[row, start:end] = doc
            positions[row, start:end] = np.arange(end - start)
    same_doc = np.r_["1", segment_ids[:, 1:] == segment_ids[:, :-1], np.zeros((batch, 1), bool)]
    return {
        "tokens": jnp.asarray(tokens, jnp.int32),
        "targets": jnp.asarray(np.roll(tokens, -1, axis=1), jnp.int32),
        "positions": jnp.asarray(positions),
        "segment_ids": jnp.asarray(segment_ids),
        "loss_mask": jnp.asarray(same_doc & (segment_ids > 0), jnp.float32),
    }


@pytest.fixture(scope="module")
def reference():
    config = small_config()
    params = model.init_params(config, jax.random.key(0))
    batch = packed_batch()
    logits = model.forward(config, params, batch["tokens"], positions=batch["positions"], segment_ids=batch["segment_ids"])
    loss, grads = jax.value_and_grad(lambda p: model.loss_fn(config, p, batch)[0])(params)
    return config, params, batch, logits, loss, grads


def _assert_trees_close(a, b, rtol):
    for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b)):
        x, y = np.asarray(x), np.asarray(y)
        scale = max(np.abs(x).max(), 1e-30)
        assert np.abs(x - y).max() <= rtol * scale, f"{jax.tree_util.keystr(path)}: {np.abs(x - y).max()} vs {scale}"


@pytest.mark.parametrize("axes, layout", [
    ({"sp": 8}, "contiguous"), ({"sp": 4, "fsdp": 2}, "contiguous"), ({"sp": 2, "fsdp": 2, "tp": 2}, "contiguous"),
    ({"dp": 2, "tp": 2, "sp": 2}, "contiguous"), ({"sp": 8}, "zigzag"), ({"sp": 2, "fsdp": 2, "tp": 2}, "zigzag"),
])
def test_sharded_path_matches_single_device(reference, axes, layout):
    """The ring (in either sequence layout) gives the single-device logits, loss and grads."""
    config, params, batch, logits, loss, grads = reference
    config = config.replace(sequence_layout=layout)
    mesh = make_mesh(**axes)
    sharded = jax.device_put(params, param_shardings(params, mesh))

    @jax.jit
    def run(params, batch):
        out = model.forward(config, params, batch["tokens"], positions=batch["positions"], segment_ids=batch["segment_ids"], mesh=mesh)
        return out, *jax.value_and_grad(lambda p: model.loss_fn(config, p, batch, mesh=mesh)[0])(params)

    ring_logits, ring_loss, ring_grads = run(sharded, batch)
    np.testing.assert_allclose(np.asarray(ring_logits), np.asarray(logits), atol=2e-5 * np.abs(logits).max())
    np.testing.assert_allclose(float(ring_loss), float(loss), rtol=1e-5)
    _assert_trees_close(grads, ring_grads, 1e-4)


def test_blockwise_remat_policies_and_whole_mlp_agree(reference):
    config, params, batch, logits, loss, grads = reference
    variants = ({"attention_impl": "blockwise"}, {"remat_policy": "none"}, {"remat_policy": "save_dots"}, {"mlp_chunk": 0})
    for overrides in variants:
        variant = config.replace(**overrides)
        out = model.forward(variant, params, batch["tokens"], positions=batch["positions"], segment_ids=batch["segment_ids"])
        np.testing.assert_allclose(np.asarray(out), np.asarray(logits), atol=2e-5 * np.abs(logits).max())
        _assert_trees_close(grads, jax.grad(lambda p: model.loss_fn(variant, p, batch)[0])(params), 1e-4)


def test_documents_do_not_see_each_other(reference):
    """Changing document 1's tokens changes nothing in document 2's logits."""
    config, params, batch, logits, _, _ = reference
    tokens = np.asarray(batch["tokens"]).copy()
    first = np.asarray(batch["segment_ids"]) == 1
    tokens[first] = (tokens[first] + 1) % 256
    out = model.forward(config, params, tokens, positions=batch["positions"], segment_ids=batch["segment_ids"])
    later = np.asarray(batch["segment_ids"]) >= 2
    np.testing.assert_allclose(np.asarray(out)[later], np.asarray(logits)[later], atol=1e-5)
    assert not np.allclose(np.asarray(out)[first], np.asarray(logits)[first])


def test_bfloat16_compute_close_to_float32(reference):
    config, params, batch, logits, _, _ = reference
    out = model.forward(config.replace(compute_dtype="bfloat16"), params, batch["tokens"], positions=batch["positions"], segment_ids=batch["segment_ids"])
    assert out.dtype == jnp.float32
    assert np.abs(np.asarray(out) - np.asarray(logits)).max() < 0.05 * np.abs(np.asarray(logits)).max()


def test_mistral_7b_parameters_and_bytes_per_device():
    config = get_config("mistral-7b")
    params = model.abstract_params(config)
    report = param_report(params, make_mesh(fsdp=2, sp=4, devices=jax.devices()))
    assert report.count == 7_241_732_096  # Mistral-7B-v0.2 as Hugging Face counts it
    assert report.bytes_total == 4 * report.count
    assert report.replicated_leaves == ()
    # Everything but the norms is split 8 ways (the 65 norm vectors, 1 MiB, are replicated).
    norms = 65 * 4096 * 4
    assert report.bytes_per_device == (report.bytes_total - norms) // 8 + norms
    q = params["layers"]["attn"]["q"]["kernel"]
    assert q.shape == (32, 4096, 32, 128) and params["lm_head"]["kernel"].shape == (4096, 32000)


def test_bad_inputs_are_named():
    config = small_config()
    params = model.init_params(config, jax.random.key(0))
    with pytest.raises(ValueError, match="tokens must be"):
        model.forward(config, params, jnp.zeros((8,), jnp.int32))
    with pytest.raises(ValueError, match="not divisible by sp"):
        model.forward(config, params, jnp.zeros((1, 12), jnp.int32), mesh=make_mesh(sp=8))
    with pytest.raises(ValueError, match="batch 1 is not divisible by dp x fsdp = 2"):
        model.forward(config, params, jnp.zeros((1, 16), jnp.int32), mesh=make_mesh(dp=2, sp=4))
    with pytest.raises(ValueError, match="num_kv_heads"):
        small_config(num_q_heads=6, num_kv_heads=4)
