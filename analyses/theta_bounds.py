"""Section 4.1 of the MegaBeam paper: the RoPE bases it chose (25M for 256K-token sequences,
75M for 512K) against the lower bound of Xu et al. (2024), b = 0.0424 * L**1.628 ("which yields
28_000_000 and 86_000_000"), and its argument against 100M: a base far above the bound leaves
RoPE pairs that never complete a 2*pi rotation within the training length.

    python analyses/theta_bounds.py [--head-dim 128] [--quick] [--out-dir analyses/results]

Prints the bound at L = 256K and 512K for K = 1,024 and K = 1,000 beside the paper's figures,
the context length each base supports by inverting the fit, and, per base, which of the
head_dim / 2 rotation pairs turn less than once over the training length. The frequencies are
reftrain.rope.inverse_frequencies (the float32 ones our model uses), so this checks our code.
Writes theta_bounds.json, .html and .png.
"""

from __future__ import annotations

import math
import platform
import sys

import jax
import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from _common import Claim, parse_args, print_claims, print_table, save_figure, write_json
from reftrain.rope import XU_COEFFICIENT, XU_EXPONENT, inverse_frequencies, xu_lower_bound

TWO_PI = 2 * math.pi

K = 1024  # the paper writes 512K for 524,288 tokens (section 4.4); K = 1,000 is checked too
# (base, training length it is judged against, where the paper pairs them)
CHOSEN = (
    (25e6, 256 * K, "section 4.1: 25M for sequences of 256K tokens"),
    (75e6, 512 * K, "section 4.1: 75M for sequences of 512K tokens"),
    (100e6, 512 * K, "section 4.1: 100M degraded long sequences; 512K assumed (the paper gives no length)"),
)
# Training lengths the paper actually used (section 3: 300K and 600K in phases 1-2, 256K and
# 512K in phase 3), for the base x length table.
TRAIN_LENGTHS = (256 * K, 300 * K, 512 * K, 600 * K)


def supported_length(base: float) -> float:
    """Returns the context length whose Xu et al. bound is `base` (the fit inverted)."""
    return (base / XU_COEFFICIENT) ** (1.0 / XU_EXPONENT)


def wavelengths(base: float, head_dim: int = 128) -> np.ndarray:
    """Returns float64 `[head_dim // 2]`: tokens per full turn, 2*pi / inv_freq, of each pair.

    inv_freq is reftrain's own (float32, base ** (-2i / head_dim)), widened to float64.
    """
    return TWO_PI / inverse_frequencies(head_dim, base).astype(np.float64)


def incomplete_pairs(base: float, length: int, head_dim: int = 128) -> list[int]:
    """Returns the pairs i that do not complete a 2*pi turn over positions 0..length-1.

    The largest angle pair i reaches is (length - 1) * inv_freq_i; below 2*pi it never comes
    back to where it started, so the model never sees its full period during training.
    """
    inv_freq = inverse_frequencies(head_dim, base).astype(np.float64)
    return [int(i) for i in np.flatnonzero((length - 1) * inv_freq < TWO_PI)]


def first_incomplete_pair(base: float, length: int, head_dim: int = 128) -> int:
    """Returns the closed form of the first incomplete pair (Liu et al. 2023's critical dimension
    / 2): the smallest i with (length - 1) * base**(-2i/head_dim) < 2*pi, in float64."""
    x = (head_dim / 2) * math.log((length - 1) / TWO_PI) / math.log(base)
    return min(max(math.floor(x) + 1, 0), head_dim // 2)


def _configure(parser) -> None:
    parser.add_argument("--head-dim", type=int, default=128,
                        help="RoPE head dimension (Mistral-7B: 128, so 64 rotation pairs)")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(__doc__, _configure, argv)
    if args.head_dim < 2 or args.head_dim % 2 or args.head_dim > 4096:
        print(f"theta_bounds: --head-dim must be an even number in 2..4096, got {args.head_dim}", file=sys.stderr)
        return 2
    head_dim, pairs = args.head_dim, args.head_dim // 2

    # 1. The bound at 256K and 512K, for both meanings of K.
    bounds = {f"{n}K (K={k:,})": {"length": n * k, "bound": xu_lower_bound(n * k)}
              for n in (256, 300, 512, 600) for k in (1024, 1000)}
    b256, b512 = xu_lower_bound(256 * K), xu_lower_bound(512 * K)
    b256_1000, b512_1000 = xu_lower_bound(256_000), xu_lower_bound(512_000)
    k_matches = (int(b256 // 1e6), int(b512 // 1e6)) == (28, 86)

    # 2. Each chosen base: the length it supports, and the pairs that never complete a turn.
    rows = []
    for base, length, where in CHOSEN:
        missing = incomplete_pairs(base, length, head_dim)
        lam = wavelengths(base, head_dim)
        assert not missing or missing[0] == first_incomplete_pair(base, length, head_dim), (base, length)
        rows.append({
            "base": base, "training_length": length, "where": where,
            "bound_at_length": xu_lower_bound(length), "base_over_bound": base / xu_lower_bound(length),
            "supported_length": supported_length(base),
            "incomplete_count": len(missing), "incomplete_pairs": missing,
            "last_complete_wavelength": float(lam[missing[0] - 1]) if missing and missing[0] > 0 else None,
            "first_incomplete_wavelength": float(lam[missing[0]]) if missing else None,
        })
    matrix = {f"{base / 1e6:g}M": {str(length): len(incomplete_pairs(base, length, head_dim)) for length in TRAIN_LENGTHS}
              for base, _, _ in CHOSEN}

    r25, r75, r100 = rows
    claims = [
        Claim("Xu bound at 256K, K=1,024 (L=262,144)", 28, round(b256 / 1e6, 2), "M"),
        Claim("Xu bound at 512K, K=1,024 (L=524,288)", 86, round(b512 / 1e6, 2), "M"),
        Claim("Xu bound at 256K, K=1,000 (L=256,000)", 28, round(b256_1000 / 1e6, 2), "M"),
        Claim("Xu bound at 512K, K=1,000 (L=512,000)", 86, round(b512_1000 / 1e6, 2), "M"),
        Claim("Xu bound at 300K (L=307,200), phase 1's sequences", None, round(xu_lower_bound(300 * K) / 1e6, 2), "M"),
        Claim("Xu bound at 600K (L=614,400), phases 1-2's sequences", None, round(xu_lower_bound(600 * K) / 1e6, 2), "M",
              why="100M is below it"),
        Claim("chosen base / bound at 256K (25M)", None, round(r25["base_over_bound"], 3), "x",
              why="paper: 'closely match'; the chosen base is below the bound"),
        Claim("chosen base / bound at 512K (75M)", None, round(r75["base_over_bound"], 3), "x"),
        Claim("100M / bound at 512K", None, round(r100["base_over_bound"], 3), "x",
              why="paper: 100M 'substantially exceeds the lower bound'"),
        Claim("context length 25M supports (fit inverted)", None, round(r25["supported_length"]), "tokens"),
        Claim("context length 75M supports (fit inverted)", None, round(r75["supported_length"]), "tokens"),
        Claim("context length 100M supports (fit inverted)", None, round(r100["supported_length"]), "tokens"),
        *[Claim(f"pairs with no full turn: {r['base'] / 1e6:.0f}M over {r['training_length']:,}", None,
                r["incomplete_count"], f"of {pairs}",
                why="the paper says 'some dimensions' and gives no count")
          for r in rows],
    ]
    print_claims(f"Section 4.1: RoPE base vs the Xu et al. bound (head_dim {head_dim})", claims)
    print(f"K = 1,024 gives {b256 / 1e6:.2f}M and {b512 / 1e6:.2f}M, K = 1,000 gives {b256_1000 / 1e6:.2f}M and "
          f"{b512_1000 / 1e6:.2f}M: the paper's 28M and 86M are the K = 1,024 values "
          f"{'truncated to whole millions' if k_matches else '(no match)'}.")
    print_table("Pairs that never complete a 2*pi turn within the training length",
                ["base", "training length", "count", "pairs", "wavelength of first incomplete / last complete pair"],
                [[f"{r['base'] / 1e6:.0f}M", r["training_length"], r["incomplete_count"],
                  f"{r['incomplete_pairs'][0]}..{r['incomplete_pairs'][-1]}" if r["incomplete_pairs"] else "none",
                  f"{r['first_incomplete_wavelength']:,.0f} / {r['last_complete_wavelength']:,.0f}"
                  if r["last_complete_wavelength"] else "-"] for r in rows])
    print_table("Incomplete pairs by base and training length",
                ["base", *[f"{length:,}" for length in TRAIN_LENGTHS]],
                [[base, *counts.values()] for base, counts in matrix.items()])
    # Why section 4.1's argument does not separate 75M from 100M by count at 512K: both bases put
    # the boundary between pairs 39 and 40; what differs is how far pair 40 misses.
    print(f"At {512 * K:,} tokens 75M and 100M both leave pairs {r75['incomplete_pairs'][0]}..{pairs - 1} "
          f"without a full turn; pair {r75['incomplete_pairs'][0]} misses by "
          f"{r75['first_incomplete_wavelength'] - 512 * K:,.0f} tokens at 75M and by "
          f"{r100['first_incomplete_wavelength'] - 512 * K:,.0f} at 100M. Over {600 * K:,} tokens (phase 2's "
          f"sequences) the counts are {matrix['75M'][str(600 * K)]} and {matrix['100M'][str(600 * K)]}.")

    # Figure: the bound curve with the bases as points; wavelength per pair against the lengths.
    curve_lengths = np.geomspace(4 * K, 2048 * K, 40 if args.quick else 200)
    figure = make_subplots(rows=1, cols=2, subplot_titles=(
        "Xu et al. lower bound b(L) = 0.0424 L^1.628", f"Wavelength 2π/inv_freq per pair (head_dim {head_dim})"))
    figure.add_trace(go.Scatter(x=curve_lengths, y=[xu_lower_bound(x) for x in curve_lengths], mode="lines",
                                name="bound b(L)"), row=1, col=1)
    for r in rows:
        figure.add_trace(go.Scatter(x=[r["training_length"]], y=[r["base"]], mode="markers+text",
                                    text=[f"{r['base'] / 1e6:.0f}M"], textposition="middle left",
                                    marker={"size": 10}, name=f"base {r['base'] / 1e6:.0f}M at {r['training_length']:,}"),
                         row=1, col=1)
    figure.add_trace(go.Scatter(x=[256 * K, 512 * K], y=[b256, b512], mode="markers", marker={"symbol": "x", "size": 10},
                                name="paper's 28M / 86M (fit at K=1,024)"), row=1, col=1)
    pair_index = np.arange(pairs)
    for base, _, _ in CHOSEN:
        figure.add_trace(go.Scatter(x=pair_index[pairs // 2:], y=wavelengths(base, head_dim)[pairs // 2:], mode="lines+markers",
                                    marker={"size": 4}, name=f"wavelength, base {base / 1e6:.0f}M"), row=1, col=2)
    for length in (256 * K, 512 * K):  # a pair above the line never completes a turn in training
        figure.add_trace(go.Scatter(x=[pairs // 2, pairs - 1], y=[length, length], mode="lines",
                                    line={"dash": "dash", "color": "gray"}, name=f"training length {length:,}"),
                         row=1, col=2)
    figure.update_xaxes(type="log", range=[math.log10(32 * K), math.log10(2048 * K)],
                        title_text="context length L (tokens)", row=1, col=1)
    figure.update_yaxes(type="log", range=[6, 9], title_text="RoPE base", row=1, col=1)
    figure.update_xaxes(range=[pairs // 2 - 0.5, pairs - 0.5], title_text="rotation pair i", row=1, col=2)
    figure.update_yaxes(type="log", title_text="tokens per 2π turn", row=1, col=2)
    figure.update_layout(title="Section 4.1: RoPE base vs context length", legend={"font": {"size": 10}})
    args.out_dir.mkdir(parents=True, exist_ok=True)
    save_figure(figure, args.out_dir, "theta_bounds", width=1300)

    write_json(args.out_dir / "theta_bounds.json", {
        "claims": [c.to_dict() for c in claims],
        "inputs": {"fit": {"coeff": XU_COEFFICIENT, "exponent": XU_EXPONENT}, "head_dim": head_dim, "K": K,
                   "criterion": "pair i is incomplete when (training_length - 1) * inv_freq_i < 2*pi",
                   "inv_freq": "reftrain.rope.inverse_frequencies (float32)", "quick": args.quick},
        "bounds": bounds, "k_1024_matches_paper": k_matches,
        "bases": rows, "incomplete_by_base_and_length": matrix,
        "curve": {"length": curve_lengths.tolist(), "bound": [xu_lower_bound(x) for x in curve_lengths]},
        "wavelengths": {f"{base / 1e6:g}M": wavelengths(base, head_dim).tolist() for base, _, _ in CHOSEN},
        "versions": {"python": platform.python_version(), "numpy": np.__version__, "jax": jax.__version__},
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
