"""Section 4.2 of the MegaBeam paper: RoPE angles built in bfloat16 lose the position far into a
long sequence (the model dropped the last digit of 7-digit needles); float32 angles fix it.

    python analyses/rope_precision.py [--theta 75e6] [--max-position 524288] [--seq 1024]
                                      [--layers 8] [--quick] [--out-dir analyses/results]

Three measurements, all through reftrain's own RoPE (reftrain.rope.rope_angles, the angle table
the model builds with rope_dtype "bfloat16" or "float32"):

1. positions: bf16(p) - p for every p < max-position, the spacing of bf16 values in the top
   binade (2,048 in [262,144, 524,287]) and how many distinct values positions collapse to (1,665);
2. angles: per rotation pair of head_dim 128 at theta 75M, the angle error against float64
   p * inv_freq, wrapped to [-pi, pi], for both modes; a pair is "scrambled" when its bf16 error
   exceeds pi/2 at some position below max-position (the rotation can point more than 90 degrees
   off, which flips the sign of that pair's q.k term) and "randomised" when its mean |error|
   over the top half of the positions is at least 0.9 * pi/2 (a uniformly random angle gives pi/2);
3. drift: the tiny preset (random init, num_layers raised to --layers, theta 75M) on a window of
   --seq random tokens placed at growing offsets up to the end of a 524,288-token context; per
   layer, the relative difference of the attention scores (q.k, causal part) and of the residual
   stream between bf16 and float32 RoPE, with float32 compute so RoPE is the only difference.
   bf16 compute with float32 RoPE (the paper's fix) is measured beside it as the noise floor,
   and float32 against itself as a control (exactly 0).

The paper states no numbers in section 4.2; the 2,048 and 1,665 are the issue's (and
docs/model.md's), checked here. Writes rope_precision.json, .html and .png.
"""

from __future__ import annotations

import math
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from _common import Claim, parse_args, print_claims, print_table, save_figure, write_json
from reftrain.config import ModelConfig, get_config
from reftrain.layers import DecoderLayer, RMSNorm
from reftrain.model import hidden_states, init_params
from reftrain.rope import apply_rope, inverse_frequencies, rope_angles, rope_tables

HEAD_DIM = 128  # Mistral-7B: 64 rotation pairs
SCRAMBLED = math.pi / 2
RANDOMISED = 0.9 * math.pi / 2
NEEDLE_TOKENS = 7  # a 7-digit number is 7 tokens: the Mistral tokenizer splits digits
PLOT_PAIRS = (0, 16, 24, 32, 48, 63)


# ---------------------------------------------------------------- positions


def bf16_positions(max_position: int) -> np.ndarray:
    """Returns int64 `[max_position]`: each position 0..max_position-1 as bfloat16 represents it
    (jnp's int32 -> bfloat16 cast, the first step of reftrain's bf16 angle table)."""
    positions = jnp.arange(max_position, dtype=jnp.int32)
    return np.asarray(positions.astype(jnp.bfloat16).astype(jnp.float32)).astype(np.int64)


def top_binade(max_position: int) -> tuple[int, int]:
    """Returns [lo, hi): the positions below max_position from the largest power of two down."""
    lo = 1 << ((max_position - 1).bit_length() - 1)
    return lo, max_position


def position_facts(rounded: np.ndarray) -> dict:
    """Returns the distinct count, the spacing in the top binade and the largest rounding error."""
    n = len(rounded)
    lo, hi = top_binade(n)
    values = np.unique(rounded[lo:hi])
    spacing = np.unique(np.diff(values))
    # How many bf16 positions a needle of NEEDLE_TOKENS consecutive tokens spans, at every start
    # in the top binade: mostly 1, so the digits' order is invisible to RoPE.
    windows = np.lib.stride_tricks.sliding_window_view(rounded[lo:hi], NEEDLE_TOKENS)
    spans = 1 + np.count_nonzero(np.diff(windows, axis=1), axis=1)
    return {
        "distinct": int(len(np.unique(rounded))),
        "top_binade": [lo, hi],
        "top_binade_spacing": [int(s) for s in spacing],
        "max_error_tokens": int(np.max(np.abs(rounded - np.arange(n)))),
        "largest_exact": int(np.flatnonzero(rounded != np.arange(n))[0] - 1) if np.any(rounded != np.arange(n)) else n - 1,
        "needle_max_span": int(spans.max()),
        "needle_share_one_fraction": float(np.mean(spans == 1)),
    }


# ---------------------------------------------------------------- angles


def wrap(angle: np.ndarray) -> np.ndarray:
    """Returns angle mod 2*pi in [-pi, pi): the error of a rotation, not of a number."""
    return (angle + np.pi) % (2 * np.pi) - np.pi


def log_bins(max_position: int, per_octave: int) -> np.ndarray:
    """Returns int starts of log-spaced position bins [1, 2, ..., max_position); bin 0 starts at 0."""
    edges = np.unique(np.round(np.geomspace(1, max_position, per_octave * int(math.log2(max_position)) + 1)).astype(int))
    return np.concatenate([[0], edges[edges < max_position]])


def angle_errors(theta: float, max_position: int, bin_starts: np.ndarray) -> dict:
    """Returns per pair, for both RoPE dtypes, the wrapped angle error against float64.

    "max": largest |error| over positions < max_position; "mean_top": mean |error| over the top
    half; "binned": largest |error| in each log bin `[bins, pairs]`; "first_scrambled": the first
    position where |error| > pi/2 (None if never).
    """
    inv_freq = inverse_frequencies(HEAD_DIM, theta)
    positions = jnp.arange(max_position, dtype=jnp.int32)
    exact_p = np.arange(max_position, dtype=np.float64)
    out = {}
    for dtype in ("bfloat16", "float32"):
        angles = np.asarray(rope_angles(positions, inv_freq, dtype).astype(jnp.float32))
        per = {"max": [], "mean_top": [], "binned": [], "first_scrambled": []}
        for d in range(HEAD_DIM // 2):  # one pair at a time keeps memory at a few MB
            error = np.abs(wrap(angles[:, d].astype(np.float64) - exact_p * np.float64(inv_freq[d])))
            per["max"].append(float(error.max()))
            per["mean_top"].append(float(error[max_position // 2:].mean()))
            per["binned"].append(np.maximum.reduceat(error, bin_starts))
            hits = np.flatnonzero(error > SCRAMBLED)
            per["first_scrambled"].append(int(hits[0]) if len(hits) else None)
        per["binned"] = np.stack(per["binned"], axis=1)
        out[dtype] = per
    out["inv_freq"] = inv_freq
    return out


# ---------------------------------------------------------------- drift on the tiny model


def _layer_scores(config: ModelConfig, layer_params, x, cos, sin, segment_ids):
    """Returns (layer output, float32 q.k scores `[B, Hkv, G, T, T]`) of one decoder layer.

    The q and k projections are the model's own (captured from reftrain's Attention module);
    RoPE and the score einsum are those of reftrain (apply_rope, dense_attention's grouping).
    """
    (y, _), state = DecoderLayer(config, None).apply({"params": layer_params}, x, cos, sin, segment_ids,
                                                     capture_intermediates=True)
    projected = state["intermediates"]["attn"]
    q = apply_rope(projected["q"]["__call__"][0], cos, sin)
    k = apply_rope(projected["k"]["__call__"][0], cos, sin)
    batch, length, _, _ = q.shape
    groups = config.num_q_heads // config.num_kv_heads
    q = q.reshape(batch, length, config.num_kv_heads, groups, config.head_dim)
    scores = jnp.einsum("bqhgd,bkhd->bhgqk", q, k, preferred_element_type=jnp.float32) * config.head_dim**-0.5
    return y, scores


def layer_outputs(config: ModelConfig, params, tokens, positions) -> dict:
    """Returns what each layer of the model computes, replayed layer by layer under one scan:
    "scores" float32 `[L, B, Hkv, G, T, T]` (q.k / sqrt(Dh), 0 above the diagonal), "hidden"
    float32 `[L, B, T, D]` (the residual stream after the layer) and "final" `[B, T, D]` (after
    the final norm, what reftrain.model.hidden_states returns).
    """
    segment_ids = jnp.ones_like(tokens)
    length = tokens.shape[1]
    causal = jnp.tril(jnp.ones((length, length), bool))
    cos, sin = rope_tables(positions, config)
    dtype, param_dtype = jnp.dtype(config.compute_dtype), jnp.dtype(config.param_dtype)

    def step(x, layer_params):
        y, scores = _layer_scores(config, layer_params, x, cos, sin, segment_ids)
        return y, {"scores": jnp.where(causal, scores, 0), "hidden": y.astype(jnp.float32)}

    x = jnp.take(params["embed"]["embedding"].astype(dtype), tokens, axis=0)
    x, per_layer = jax.lax.scan(step, x, params["layers"])
    final = RMSNorm(config.rms_norm_eps, dtype, param_dtype).apply({"params": params["final_norm"]}, x)
    return {**per_layer, "final": final.astype(jnp.float32)}


def relative_drift(reference: dict, other: dict) -> dict:
    """Returns ||a - b|| / ||a|| per layer for "scores" and "hidden", and for "final" (float64)."""
    def relative(a, b):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        return float(np.linalg.norm(a - b) / np.linalg.norm(a))

    return {"scores": [relative(a, b) for a, b in zip(reference["scores"], other["scores"])],
            "hidden": [relative(a, b) for a, b in zip(reference["hidden"], other["hidden"])],
            "final": relative(reference["final"], other["final"])}


def measure_drift(theta: float, seq: int, layers: int, offsets: list[int]) -> dict:
    """Drift of each mode against float32 RoPE and compute, per window offset and layer."""
    base = get_config("tiny", rope_theta=theta, num_layers=layers, compute_dtype="float32")
    modes = {
        "f32 RoPE + f32 compute (control: must be 0)": base,  # a second, separate run of the reference
        "bf16 RoPE + f32 compute": base.replace(rope_dtype="bfloat16"),
        "f32 RoPE + bf16 compute (paper's fix)": base.replace(compute_dtype="bfloat16"),
        "bf16 RoPE + bf16 compute (paper's bug)": base.replace(rope_dtype="bfloat16", compute_dtype="bfloat16"),
    }
    params = init_params(base, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (1, seq), 0, base.vocab_size, dtype=jnp.int32)
    runs = {}  # one compiled replay per distinct config

    def replay(config, positions):
        if config not in runs:
            runs[config] = jax.jit(lambda p, t, pos, config=config: layer_outputs(config, p, t, pos))
        return jax.device_get(runs[config](params, tokens, positions))

    result = {"config": base.to_dict(), "offsets": offsets, "modes": {name: [] for name in modes}}
    for offset in offsets:
        positions = (offset + jnp.arange(seq, dtype=jnp.int32))[None]
        reference = replay(base, positions)
        for name, config in modes.items():
            drift = relative_drift(reference, replay(config, positions))
            result["modes"][name].append({"offset": offset, "last_position": offset + seq - 1, **drift})
    # The replay must be the model: compare its last reference with reftrain.model.hidden_states.
    model = np.asarray(hidden_states(base, params, tokens, positions=positions), np.float64)
    result["replay_vs_model"] = float(np.linalg.norm(reference["final"] - model) / np.linalg.norm(model))
    return result


# ---------------------------------------------------------------- main


def _sig(values: np.ndarray) -> list[float]:
    """Returns values to 4 significant digits: the figure's data, a third of the JSON's size."""
    return [float(f"{v:.4g}") for v in values]


def _configure(parser) -> None:
    parser.add_argument("--theta", type=float, default=75e6, help="RoPE base (default 75e6, section 3's second value)")
    parser.add_argument("--max-position", type=int, default=524_288, help="positions 0..N-1 (default 524,288 = 512K)")
    parser.add_argument("--seq", type=int, default=None, help="drift window in tokens (default 1,024; 128 with --quick)")
    parser.add_argument("--layers", type=int, default=None, help="tiny model depth for the drift (default 8; 4 with --quick)")


def _check(args) -> str | None:
    if not (math.isfinite(args.theta) and args.theta > 1):
        return f"--theta must be a finite number above 1, got {args.theta}"
    if not 1024 <= args.max_position <= 1 << 24:
        return f"--max-position must be in 1,024..16,777,216, got {args.max_position}"
    if not 16 <= args.seq <= min(8192, args.max_position):
        return f"--seq must be in 16..{min(8192, args.max_position):,}, got {args.seq}"
    if not 1 <= args.layers <= 32:
        return f"--layers must be in 1..32, got {args.layers}"
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(__doc__, _configure, argv)
    if args.seq is None:
        args.seq = 128 if args.quick else 1024
    if args.layers is None:
        args.layers = 4 if args.quick else 8
    problem = _check(args)
    if problem:
        print(f"rope_precision: {problem}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    n, pairs = args.max_position, HEAD_DIM // 2

    # 1. Positions.
    rounded = bf16_positions(n)
    facts = position_facts(rounded)
    lo, hi = facts["top_binade"]

    # 2. Angles, per pair.
    bin_starts = log_bins(n, 2 if args.quick else 8)
    errors = angle_errors(args.theta, n, bin_starts)
    bf16, f32 = errors["bfloat16"], errors["float32"]
    scrambled = [d for d in range(pairs) if bf16["max"][d] > SCRAMBLED]
    randomised = [d for d in range(pairs) if bf16["mean_top"][d] >= RANDOMISED]
    # Scrambled pairs among positions up to each bin's end (the error's running maximum).
    running = np.maximum.accumulate(bf16["binned"], axis=0)
    bin_ends = np.append(bin_starts[1:], n) - 1
    scrambled_by_position = (running > SCRAMBLED).sum(axis=1)
    # In tokens: how far off the position a pair's bf16 angle points (meaningful while unwrapped).
    position_equivalent = [bf16["max"][d] / float(errors["inv_freq"][d]) for d in range(pairs)]

    # 3. Drift on the tiny model, windows ending at growing positions up to max-position.
    ends = sorted({args.seq, *[p for p in (8_192, 32_768, 131_072, n) if args.seq <= p <= n]})
    if args.quick:
        ends = [args.seq, n]
    offsets = [end - args.seq for end in ends]
    drift = measure_drift(args.theta, args.seq, args.layers, offsets)
    if drift["replay_vs_model"] > 1e-4:
        raise AssertionError(f"layer-by-layer replay differs from reftrain.model by {drift['replay_vs_model']:.2e}")
    control, bug, fix, both = drift["modes"].values()
    if any(v != 0 for row in control for v in (*row["scores"], *row["hidden"], row["final"])):
        raise AssertionError("the drift of float32 RoPE against itself is not 0")

    claims = [
        Claim(f"bf16 spacing of positions in [{lo:,}, {hi - 1:,}]", None, max(facts["top_binade_spacing"]), "tokens",
              why="the paper gives no figure; the issue states 2,048"),
        Claim(f"distinct bf16 values of positions 0..{n - 1:,}", None, facts["distinct"],
              why="the paper gives no figure; the issue states 1,665"),
        Claim("largest position exact in bf16", None, facts["largest_exact"], "tokens"),
        Claim(f"largest bf16 position error below {n:,}", None, facts["max_error_tokens"], "tokens"),
        Claim(f"{NEEDLE_TOKENS}-token needle in [{lo:,}, {hi - 1:,}]: share one bf16 position", None,
              round(100 * facts["needle_share_one_fraction"], 1), "% of starts",
              why=f"never more than {facts['needle_max_span']} positions; paper: the last digit is dropped"),
        Claim(f"float32 angles: largest error, any pair, p < {n:,}", None, round(max(f32["max"]), 6), "rad",
              why="paper: float32 'maintains sufficient precision'; half a float32 ulp"),
        Claim(f"pairs scrambled by bf16 (|angle error| > pi/2 at some p < {n:,})", None, len(scrambled), f"of {pairs}",
              why=f"pairs {scrambled[0]}..{scrambled[-1]}" if scrambled else ""),
        Claim(f"pairs randomised by bf16 (mean |error| >= 0.9 pi/2 over p >= {n // 2:,})", None, len(randomised),
              f"of {pairs}", why=f"pairs {randomised[0]}..{randomised[-1]}" if randomised else ""),
        Claim("pairs scrambled in float32 (same test)", None, sum(m > SCRAMBLED for m in f32["max"]), f"of {pairs}"),
        Claim(f"tiny model: layer-1 q.k score drift, bf16 RoPE, window ending at {ends[0]:,}", None,
              round(bug[0]["scores"][0], 4), "relative"),
        Claim(f"tiny model: layer-1 q.k score drift, bf16 RoPE, window ending at {ends[-1]:,}", None,
              round(bug[-1]["scores"][0], 4), "relative",
              why=f"bf16 compute with f32 RoPE drifts {fix[-1]['scores'][0]:.4f} (the noise floor)"),
        Claim(f"tiny model: final hidden-state drift after {args.layers} layers, bf16 RoPE, window ending at {ends[-1]:,}",
              None, round(bug[-1]["final"], 4), "relative",
              why=f"bf16 compute with f32 RoPE: {fix[-1]['final']:.4f}"),
    ]
    print_claims(f"Section 4.2: bfloat16 vs float32 RoPE at theta {args.theta:,.0f}, positions < {n:,}", claims)
    print_table("Angle error per pair (rad, wrapped); position-equivalent = bf16 max error / inv_freq",
                ["pair", "inv_freq", "bf16 max", f"bf16 mean, p >= {n // 2:,}", "f32 max",
                 "bf16 first p with error > pi/2", "position-equivalent (tokens)"],
                [[str(d), f"{float(errors['inv_freq'][d]):.3e}", f"{bf16['max'][d]:.4f}", f"{bf16['mean_top'][d]:.4f}",
                  f"{f32['max'][d]:.2e}", "-" if bf16["first_scrambled"][d] is None else f"{bf16['first_scrambled'][d]:,}",
                  "-" if d in scrambled else f"{position_equivalent[d]:,.0f}"]
                 for d in sorted({*PLOT_PAIRS, 8, 20, 24, 26, 27, 28, 40})])
    depth_rows = []
    for name, rows in drift["modes"].items():
        for row in rows:
            depth_rows.append([name, f"{row['offset']:,}..{row['last_position']:,}", f"{row['scores'][0]:.3g}",
                               f"{max(row['scores']):.3g}", f"{row['hidden'][0]:.3g}", f"{row['hidden'][-1]:.3g}",
                               f"{row['final']:.3g}"])
    print_table(f"Tiny model ({args.layers} layers, theta {args.theta:,.0f}, {args.seq:,}-token window): relative drift "
                "||a - b|| / ||a|| against float32 RoPE + float32 compute (every layer in the JSON)",
                ["mode", "positions", "q.k, L1", "q.k, worst", "resid, L1", f"resid, L{args.layers}", "final"], depth_rows)
    print(f"replay vs reftrain.model.hidden_states: {drift['replay_vs_model']:.1e} relative; "
          f"took {time.perf_counter() - started:.1f} s")

    # Figure: position error and angle error against position (log x); scrambled pairs; drift.
    figure = make_subplots(rows=2, cols=2, horizontal_spacing=0.08, vertical_spacing=0.12, subplot_titles=(
        "bf16 position error |bf16(p) - p| (largest in bin)",
        f"angle error, wrapped, largest in bin (theta {args.theta / 1e6:g}M)",
        "pairs scrambled (error > π/2) among positions ≤ p",
        f"tiny model: q.k score drift per layer ({args.seq:,}-token window)"))
    x = bin_ends + 1
    position_error = np.maximum.reduceat(np.abs(rounded - np.arange(n)), bin_starts)
    figure.add_trace(go.Scatter(x=x, y=position_error, mode="lines", line={"shape": "hv"},
                                name="bf16 position error"), row=1, col=1)
    for d in PLOT_PAIRS:
        figure.add_trace(go.Scatter(x=x, y=bf16["binned"][:, d], mode="lines", name=f"bf16 pair {d}"), row=1, col=2)
    figure.add_trace(go.Scatter(x=x, y=f32["binned"][:, 1], mode="lines", line={"dash": "dot"},
                                name="float32 pair 1"), row=1, col=2)
    figure.add_trace(go.Scatter(x=[x[0], x[-1]], y=[SCRAMBLED, SCRAMBLED], mode="lines",
                                line={"dash": "dash", "color": "gray"}, name="π/2"), row=1, col=2)
    figure.add_trace(go.Scatter(x=x, y=scrambled_by_position, mode="lines", line={"shape": "hv"},
                                name="scrambled pairs (bf16)"), row=2, col=1)
    depth = list(range(1, args.layers + 1))
    for row in bug:
        figure.add_trace(go.Scatter(x=depth, y=row["scores"], mode="lines+markers",
                                    name=f"bf16 RoPE, p {row['offset']:,}..{row['last_position']:,}"), row=2, col=2)
    figure.add_trace(go.Scatter(x=depth, y=fix[-1]["scores"], mode="lines+markers", line={"dash": "dot"},
                                name=f"f32 RoPE + bf16 compute, p {fix[-1]['offset']:,}.. (noise floor)"), row=2, col=2)
    for r, c in ((1, 1), (1, 2), (2, 1)):
        figure.update_xaxes(type="log", title_text="position p", row=r, col=c)
    figure.update_yaxes(type="log", title_text="tokens", row=1, col=1)
    figure.update_yaxes(type="log", range=[-8, 0.7], title_text="rad", row=1, col=2)
    figure.update_yaxes(title_text=f"of {pairs} pairs", row=2, col=1)
    figure.update_xaxes(title_text="layer", dtick=1, row=2, col=2)
    figure.update_yaxes(type="log", title_text="||Δ scores|| / ||scores||", row=2, col=2)
    figure.update_layout(title="Section 4.2: bfloat16 vs float32 RoPE", legend={"font": {"size": 10}})
    args.out_dir.mkdir(parents=True, exist_ok=True)
    save_figure(figure, args.out_dir, "rope_precision", width=1400, height=900)

    write_json(args.out_dir / "rope_precision.json", {
        "claims": [c.to_dict() for c in claims],
        "inputs": {"theta": args.theta, "max_position": n, "head_dim": HEAD_DIM, "seq": args.seq,
                   "layers": args.layers, "quick": args.quick,
                   "definitions": {
                       "angle_error": "|wrap(angle - p * inv_freq)| with p * inv_freq in float64, inv_freq reftrain's float32",
                       "scrambled": "max angle error over p < max_position exceeds pi/2",
                       "randomised": "mean angle error over p >= max_position / 2 is at least 0.9 * pi/2",
                       "drift": "||a - b|| / ||a||, a = float32 RoPE and compute; scores: q.k / sqrt(Dh), causal part"}},
        "positions": facts,
        "angles": {"pairs": list(range(pairs)), "inv_freq": errors["inv_freq"].tolist(),
                   "bf16_max": bf16["max"], "bf16_mean_top": bf16["mean_top"], "f32_max": f32["max"],
                   "bf16_first_scrambled": bf16["first_scrambled"], "scrambled": scrambled, "randomised": randomised,
                   "position_equivalent_tokens": position_equivalent},
        "binned": {"bin_start": bin_starts.tolist(), "bin_end": bin_ends.tolist(),
                   "position_error": position_error.tolist(),
                   "bf16_angle_error": {str(d): _sig(bf16["binned"][:, d]) for d in range(pairs)},
                   "f32_angle_error": {str(d): _sig(f32["binned"][:, d]) for d in range(pairs)},
                   "scrambled_pairs_up_to_bin_end": scrambled_by_position.tolist()},
        "drift": drift,
        "versions": {"python": platform.python_version(), "jax": jax.__version__, "numpy": np.__version__},
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
