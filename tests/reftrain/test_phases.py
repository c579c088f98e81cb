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


def test_the_small_preset_adds_a_base_stage_and_scales_the_papers_phases_by_the_theta_bound():
    from reftrain.phases import SMALL_BASE_LENGTH, SMALL_LENGTH_SCALE
    from reftrain.rope import xu_lower_bound

    base = get_phase("small", 0)
    assert [s.seq_len for s in base.stages] == [SMALL_BASE_LENGTH] and base.recall_fraction > 0 and base.data == "pretrain"
    assert base.probe_every > 0 and base.probe_stop >= 0.9  # the base stage ends once it retrieves
    assert abs(base.rope_theta / xu_lower_bound(SMALL_BASE_LENGTH) - 1) < 0.01  # the bound at 2K: about 10,000
    longest = max(s.seq_len for n in (1, 2, 3) for s in get_phase("small", n).stages)
    assert longest >= 16 * SMALL_BASE_LENGTH  # NIAH is read at 16x the base length after the extension
    for number in (1, 2, 3, 4):
        paper, small = get_phase("mistral-7b", number), get_phase("small", number)
        assert small.data == paper.data and small.rope_dtype == "float32"
        assert small.recall_fraction == (0.2 if paper.data == "pretrain" else 0) and small.probe_stop == 0
        assert len(small.stages) == len(paper.stages)
        for p, s in zip(paper.stages, small.stages):  # the paper's lengths x 1/16, to 1K
            assert abs(s.seq_len - max(SMALL_BASE_LENGTH, p.seq_len * SMALL_LENGTH_SCALE)) <= 512
        # Theta raised to the bound at the scaled length the paper's answers (25M ~ 256K, 75M ~ 512K).
        scaled = (256 if number == 1 else 512) * 1024 * SMALL_LENGTH_SCALE
        assert abs(small.rope_theta / xu_lower_bound(scaled) - 1) < 0.01 and small.rope_theta > base.rope_theta


def test_a_phase_refuses_a_recall_fraction_outside_0_1_or_on_sft_data_and_bad_probes():
    import pytest

    with pytest.raises(ValueError, match="recall_fraction"):
        get_phase("small", 0).replace(recall_fraction=1.5)
    with pytest.raises(ValueError, match="recall_fraction"):
        get_phase("small", 4).replace(recall_fraction=0.1)
    with pytest.raises(ValueError, match="probe_stop"):
        get_phase("small", 0).replace(probe_stop=2.0)
    with pytest.raises(ValueError, match="probe_every"):
        get_phase("small", 0).replace(probe_every=-1)
    with pytest.raises(KeyError, match="phase must be 1-4 for preset 'mistral-7b', got 5"):
        get_phase("mistral-7b", 5)
