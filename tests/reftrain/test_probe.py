"""The training probes: the needle probe's prompts and answers, its scoring against an oracle,
answer accuracy on recall rows, and the probe in a run (metrics.jsonl, stop rule, chaining)."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reftrain import run as run_cli
from reftrain.data import load_tokenizer
from reftrain.eval import probe as probe_lib
from reftrain.eval.probe import NeedleProbe, answer_accuracy, answer_spans
from tests.reftrain.test_train import SMALL


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


def _oracle(shift: int = 0):
    """An _argmax_at that 'predicts' the true next token at every position (plus `shift`)."""
    def argmax_at(config, params, mesh, tokens, positions, segment_ids, where):
        tokens = np.asarray(tokens)
        nxt = np.concatenate([tokens[:, 1:], np.full((len(tokens), 1), 13)], axis=1)  # 13: "\n", no digit
        return np.take_along_axis(nxt, np.asarray(where), axis=1) + shift
    return argmax_at


def test_the_needle_probe_holds_each_prompt_then_its_answer(tokenizer):
    probe = NeedleProbe(tokenizer, length=512, trials=5)
    assert probe.tokens.shape == (5, 512) and probe.haystack.label == "held-out:docutils-docs"
    for row, where, answer in zip(probe.tokens, probe.where, probe.answers):
        assert np.array_equal(row[where[: len(answer)] + 1], answer)  # position p predicts token p + 1
        assert tokenizer.decode(row[: where[0] + 1]).endswith("number is:")
        assert where[len(answer)] == 511  # after the last digit: the row's end


def test_the_needle_probe_scores_an_oracle_right_and_a_wrong_model_wrong(tokenizer, monkeypatch):
    probe = NeedleProbe(tokenizer, length=256, trials=4)
    monkeypatch.setattr(probe_lib, "_argmax_at", _oracle())
    assert probe(None, None) == 1.0
    monkeypatch.setattr(probe_lib, "_argmax_at", _oracle(shift=1))
    assert probe(None, None) == 0.0


@settings(max_examples=30, deadline=None)
@given(st.lists(st.lists(st.booleans(), min_size=12, max_size=12), min_size=1, max_size=4))
def test_answer_spans_are_the_maximal_runs_of_the_mask(rows):
    mask = np.array(rows, np.float32)
    spans = answer_spans(mask)
    rebuilt = np.zeros_like(mask)
    for row, a, b in spans:
        assert rebuilt[row, a:b].sum() == 0 and (a == 0 or mask[row, a - 1] == 0) and (b == 12 or mask[row, b] == 0)
        rebuilt[row, a:b] = 1
    assert np.array_equal(rebuilt, mask)


def test_answer_accuracy_counts_whole_answers(monkeypatch):
    tokens = np.arange(40, dtype=np.int32).reshape(2, 20)
    batch = {"tokens": tokens, "targets": np.roll(tokens, -1, axis=1), "positions": tokens % 20,
             "segment_ids": np.ones_like(tokens), "loss_mask": np.zeros((2, 20), np.float32)}
    batch["loss_mask"][0, 3:6] = batch["loss_mask"][0, 10:12] = batch["loss_mask"][1, 0:4] = 1
    batch["targets"][:, -1] = 13
    monkeypatch.setattr(probe_lib, "_argmax_at", _oracle())
    assert answer_accuracy(None, None, batch) == 1.0
    batch["targets"][0, 11] = 0  # one token of the second answer wrong: 2 of 3 answers
    assert answer_accuracy(None, None, batch) == pytest.approx(2 / 3)


def test_a_run_logs_the_probe_and_stops_once_it_has_learned(tmp_path, capsys, monkeypatch):
    calls = []

    def learned(self, config, params, mesh=None):
        calls.append(self.length)
        return 1.0

    monkeypatch.setattr(NeedleProbe, "__call__", learned)
    args = ["--phase", "0", "--run-dir", str(tmp_path), "--no-progress", "--cpu-devices", "1", *SMALL,
            "--set=stages=128x40x2", "--set=probe_every=3", "--set=probe_trials=2"]
    assert run_cli.main(args) == 0
    err = capsys.readouterr().err
    assert "phase 0: stopped at step 6 of 20: the NIAH probe reached 1.00 >= 0.9 twice in a row" in err
    records = [json.loads(line) for line in (tmp_path / "phase0" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "probe_niah" in r] == [2, 5] and calls == [128, 128]
    saved = json.loads((tmp_path / "phase0" / "config.json").read_text())
    assert saved["total_steps"] == 6 and saved["stopped_early"]["planned_steps"] == 20
    assert run_cli.main(args) == 0  # a second call has nothing to do
    assert "phase 0: finished at step 6 when its probe reached 1.00" in capsys.readouterr().err
    assert run_cli.main(["--phase", "1", "--run-dir", str(tmp_path), "--max-steps", "1", "--no-progress",
                         "--cpu-devices", "1", *SMALL]) == 0
    assert "starting from phase 0's final checkpoint (step 6 of 6" in capsys.readouterr().err


def test_the_probe_reads_zigzag_hidden_states_at_the_natural_positions(tokenizer):
    import jax

    from reftrain.config import get_config
    from reftrain.model import init_params
    from reftrain.sharding import make_mesh

    natural = get_config("tiny", hidden_size=64, intermediate_size=128, num_q_heads=4, num_kv_heads=2, head_dim=16,
                         q_chunk=64, kv_chunk=64)
    zigzag = natural.replace(sequence_layout="zigzag")
    params = init_params(natural, jax.random.key(1))
    mesh = make_mesh(sp=2, devices=jax.devices()[:2])
    probe = NeedleProbe(tokenizer, length=256, trials=2)
    positions = np.broadcast_to(np.arange(256, dtype=np.int32), (2, 256))
    args = (probe.tokens, positions, np.ones_like(probe.tokens), probe.where)
    assert np.array_equal(probe_lib._argmax_at(zigzag, params, mesh, *args),
                          probe_lib._argmax_at(natural, params, None, *args))


def test_a_run_without_checkpoints_does_not_stop_on_the_probe(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(NeedleProbe, "__call__", lambda self, config, params, mesh=None: 1.0)
    assert run_cli.main(["--phase", "0", "--run-dir", str(tmp_path), "--no-progress", "--cpu-devices", "1", *SMALL,
                         "--set=stages=128x8x2", "--set=probe_every=1", "--set=probe_trials=2", "--no-checkpoints"]) == 0
    assert "stopped at step" not in capsys.readouterr().err
    assert len((tmp_path / "phase0" / "metrics.jsonl").read_text().splitlines()) == 4
    assert "stopped_early" not in json.loads((tmp_path / "phase0" / "config.json").read_text())
