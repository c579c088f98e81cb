"""analyses/fig2_prealloc.py: the Fig. 2 curves and the peak reduction, at the --quick size."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "analyses"))

import fig2_prealloc  # noqa: E402

GIB = 2**30


def test_quick_run_curves_reduction_and_breakdown(analysis):
    data, stdout = analysis("fig2_prealloc")
    assert "Fig. 2: accumulated pre-allocation" in stdout and "Where the pre-allocation goes" in stdout
    inputs = data["inputs"]
    assert (inputs["model"], inputs["program"], inputs["seq"], inputs["devices"]) == ("tiny", "layer", 131_072, 8)
    cases = {(c["attention"], c["q_chunk"], c["kv_chunk"]): c for c in data["cases"]}
    assert set(cases) == {("paper", 1024, 2048), ("paper", 2048, 4096), ("ours", 1024, 2048), ("ours", 2048, 4096)}
    for case in cases.values():
        index, size = np.array(case["curve"]).T
        assert np.all(np.diff(index) > 0) and np.all(np.diff(size) >= 0), "an accumulated curve never falls"
        # The peak of an accumulated curve is its last value: hloscope's figure and the JSON agree.
        assert case["peak_bytes"] == size.max() == size[-1] == case["figures"]["prealloc_accumulated"]
        assert index[-1] == case["instructions"] - 1
        assert sum(case["breakdown"].values()) == case["peak_bytes"]
    # The reduction is the difference of the two curves' maxima, as the JSON holds them.
    small, large = cases[("paper", 1024, 2048)], cases[("paper", 2048, 4096)]
    expected = (max(b for _, b in small["curve"]) - max(b for _, b in large["curve"])) / GIB
    assert data["reduction_gib"] == expected > 0
    claims = {c["name"]: c for c in data["claims"]}
    reduction = next(c for name, c in claims.items() if name.startswith("peak reduction, paper-faithful"))
    assert reduction["paper"] == 186 and reduction["ours"] == round(expected, 2) and reduction["why"]
    ours = next(c for name, c in claims.items() if name.startswith("peak reduction, our attention"))
    expected_ours = (cases[("ours", 1024, 2048)]["peak_bytes"] - cases[("ours", 2048, 4096)]["peak_bytes"]) / GIB
    assert ours["ours"] == round(expected_ours, 2)
    # Larger chunks shrink the int32 tables by 4x (both chunk counts halve); ours has none stacked.
    assert small["breakdown"]["int32 tables"] > 2 * large["breakdown"]["int32 tables"] > 0
    local = inputs["seq"] // inputs["devices"]
    assert small["largest_int32_stack"]["shape"] == f"s32[8,{local // 1024},{local // 2048},1,{inputs['seq']}]"
    assert small["largest_int32_stack"]["bytes"] == 4 * 8 * (local // 1024) * (local // 2048) * inputs["seq"]
    for key in (("ours", 1024, 2048), ("ours", 2048, 4096)):
        assert cases[key]["largest_int32_stack"] is None
        assert cases[key]["breakdown"].get("float chunk stacks", 0) == 0
    share = next(c for name, c in claims.items() if name.startswith("share of HLO indices"))
    assert 0 <= share["ours"] <= 100


def test_bad_flags_exit_2_with_one_line(capsys, tmp_path):
    # In-process (no subprocess, no compile): every flag is checked before anything is compiled.
    for flags in (["--seq", "1000"], ["--model", "gpt-9"], ["--target", "no-such-gpu"], ["--devices", "0"]):
        assert fig2_prealloc.main(["--quick", "--out-dir", str(tmp_path), *flags]) == 2, flags
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("fig2_prealloc: "), (flags, err)
    assert not list(tmp_path.iterdir()), "nothing is written on a user error"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 50), min_size=1, max_size=40), st.lists(st.integers(0, 50), min_size=1, max_size=40))
def test_fraction_below_matches_a_loop(a, b):
    n = min(len(a), len(b))
    expected = sum(a[i] <= b[i] for i in range(n)) / n
    assert math.isclose(fig2_prealloc.fraction_below(a, b), expected)
    # At each index one of the two is below the other, so the two shares cover every index.
    assert fig2_prealloc.fraction_below(a, b) + fig2_prealloc.fraction_below(b, a) >= 1 - 1e-12
    assert fig2_prealloc.fraction_below(a, a) == 1.0
