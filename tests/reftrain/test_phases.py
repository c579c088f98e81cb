"""The tiny phases: the paper's lengths and proportions, scaled to run in minutes on 2 cores."""

from __future__ import annotations

from reftrain.phases import TINY_LENGTH_SCALE, get_phase


def test_tiny_phase_3_keeps_the_papers_lengths_and_proportions_in_few_steps():
    paper, tiny = get_phase("mistral-7b", 3), get_phase("tiny", 3)
    # 1/512 of the paper's lengths, rounded to a multiple of 128 (80K -> 160 -> 128).
    assert [s.seq_len for s in tiny.stages] == [round(s.seq_len * TINY_LENGTH_SCALE / 128) * 128 for s in paper.stages]
    paper_tokens = [s.seq_len * s.sequences for s in paper.stages]
    tiny_tokens = [s.seq_len * s.sequences for s in tiny.stages]
    for p, t in zip(paper_tokens, tiny_tokens):  # each stage's share of the phase within 3 points
        assert abs(p / sum(paper_tokens) - t / sum(tiny_tokens)) < 0.03, (paper_tokens, tiny_tokens)
    # `--phase 3` on a fresh machine must stay under 5 minutes on 2 cores (issue 18): 24 steps
    # plus the data build took 232 s of CPU time; 47 steps took 353 s.
    assert tiny.steps() == 24
