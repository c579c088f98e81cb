"""hloscope diff's terminal report: the paper's Fig. 2 line stands only beside the comparison
the paper made (paper-faithful attention, chunks (1024, 2048) as A and (2048, 4096) as B)."""

from __future__ import annotations

import io

from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from hloscope.report import is_paper_fig2_pair, print_diff

CHUNKS = st.sampled_from([(512, 1024), (1024, 2048), (2048, 4096), (2048, 2048), (64, 128)])
PROGRAMS = st.sampled_from([("paper-attention", None), ("train-step", "paper"), ("train-step", "ours"), ("attention", None)])


def _profile(program: str, attention: str | None, q_chunk: int, kv_chunk: int) -> dict:
    options = {"seq": 65536, "q_chunk": q_chunk, "kv_chunk": kv_chunk}
    if attention is not None:
        options["attention"] = attention
    return {"label": f"{program} q={q_chunk} kv={kv_chunk}", "source": {"program": program, "options": options},
            "figures": {"xla_total": 3 * 2**30, "live_peak": 2**30, "prealloc_accumulated": None}, "findings": []}


def _diff_text(a: dict, b: dict) -> str:
    out = io.StringIO()
    print_diff(a, b, console=Console(file=out, width=160))
    return out.getvalue()


def test_the_paper_pair_gets_the_line_in_both_programs():
    for program, attention in (("paper-attention", None), ("train-step", "paper")):
        text = _diff_text(_profile(program, attention, 1024, 2048), _profile(program, attention, 2048, 4096))
        assert "186 GB peak reduction" in text


def test_hlo_file_profiles_never_get_the_line():
    a = {"label": "a.hlo", "source": {"hlo_file": "a.hlo"}, "figures": {}, "findings": []}
    assert not is_paper_fig2_pair(a, a)


@settings(max_examples=40, deadline=None)
@given(PROGRAMS, CHUNKS, PROGRAMS, CHUNKS)
def test_the_line_only_for_the_paper_chunks_of_the_paper_attention(program_a, chunks_a, program_b, chunks_b):
    a, b = _profile(*program_a, *chunks_a), _profile(*program_b, *chunks_b)
    paper = {("paper-attention", None), ("train-step", "paper")}
    expected = program_a in paper and program_b in paper and (chunks_a, chunks_b) == ((1024, 2048), (2048, 4096))
    assert is_paper_fig2_pair(a, b) is expected
    assert ("186 GB" in _diff_text(a, b)) is expected
