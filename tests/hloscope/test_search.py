"""`hloscope search`: candidates, budget and margin, cache, failures recorded, and a plan that
`python -m reftrain.run` accepts and trains with."""

from __future__ import annotations

import json
from dataclasses import asdict

import jax
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hloscope import cli
from hloscope.profiling import profile_program
from hloscope._lower import lower
from hloscope.programs.model_step import ModelStepShape
from hloscope.programs.train_step_search import REMAT_OPTIONS, TrainStepSpace, candidates
from hloscope.programs.train_step_speed import predicted_seconds
from hloscope.targets import get_target
from reftrain import run as reftrain_run
from reftrain.config import get_config
from reftrain.execution import EXECUTION_FIELDS, REMAT_POLICIES

SEARCH = ["search", "--model", "tiny", "--seq", "2048", "--devices", "8", "--target", "cpu", "--memory", "2GB",
          "--q-chunks", "64,128", "--kv-chunks", "128", "--remat", "full", "--jobs", "1",
          "--layouts", "contiguous"]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HLOSCOPE_CACHE", str(tmp_path / "cache"))


@given(local=st.sampled_from([256, 1024, 4096, 65536, 38400]))
def test_candidates_divide_the_local_length(local):
    found = candidates({1: local}, REMAT_OPTIONS)
    assert all(local % c.q_chunk == 0 and local % c.kv_chunk == 0 and c.kv_chunk >= c.q_chunk for c in found)
    assert not found or {c.remat_policy for c in found} == set(REMAT_OPTIONS)


@given(local=st.sampled_from([4096, 16384, 65536]), tp=st.sampled_from([1, 2, 4]))
def test_candidates_on_cudnn_take_one_chunk_pair_and_one_whole_shard_block(local, tp):
    found = candidates({tp: local}, ("full", "save_attention"), blocks=(4096, 16384, 65536), cudnn=True,
                       layouts=("contiguous", "zigzag"))
    assert len({(c.q_chunk, c.kv_chunk) for c in found}) == 1 and {c.tp for c in found} == {tp}
    # blocks at least the shard are one call (0), kept once
    assert {c.document_block for c in found} == {0} | {b for b in (4096, 16384) if b < local}
    assert len(found) == len(set(found)) == 2 * 2 * len({c.document_block for c in found})


def test_search_writes_a_plan_that_reftrain_trains_with(tmp_path, capsys):
    plan = tmp_path / "plan.json"
    assert cli.main([*SEARCH, "--out", str(plan)]) == 0
    out = capsys.readouterr().out
    assert "<- chosen" in out and "wrote" in out
    written = json.loads(plan.read_text())
    assert written["schema"] == "hloscope.plan/2" and written["model"] == "tiny"
    execution = written["execution"]
    assert execution["q_chunk"] in (64, 128) and execution["remat_policy"] == "full"
    # the execution of the step that was compiled, all of it, so that reftrain runs that step
    # (float32 for a cpu target: what reftrain runs on a CPU host, reftrain.setup.resolve)
    assert set(execution) == set(EXECUTION_FIELDS) and execution["compute_dtype"] == "float32"
    assert 0 < written["predicted"]["xla_total"] < 0.9 * 2e9

    # Cached: the same search compiles nothing and says so.
    assert cli.main(SEARCH) == 0
    assert "(cached)" in capsys.readouterr().out

    run_dir = tmp_path / "run"
    args = ["--phase", "1", "--run-dir", str(run_dir), "--plan", str(plan), "--set", "stages=256x2x1", "--max-steps", "1", "--no-progress"]
    assert reftrain_run.main([*args, "--dry-run"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["model"]["q_chunk"] == execution["q_chunk"] and shown["plan"]["source"] == "hloscope search"
    assert shown["model"]["document_block"] == execution["document_block"] == 16384  # the default
    assert shown["model"]["compute_dtype"] == "float32"  # on a CPU host unless --set says otherwise
    assert reftrain_run.main(args) == 0
    assert json.loads((run_dir / "phase1" / "config.json").read_text())["plan"]["execution"]["q_chunk"] == execution["q_chunk"]


def test_nothing_fits_a_tiny_budget_and_no_plan_is_written(tmp_path, capsys):
    plan = tmp_path / "plan.json"
    assert cli.main([*SEARCH, "--q-chunks", "128", "--memory", "1MB", "--out", str(plan)]) == 1
    assert "no candidate fits" in capsys.readouterr().out
    assert not plan.exists()


def test_a_failed_compile_is_recorded_not_fatal(capsys):
    assert cli.main([*SEARCH, "--timeout", "0.5", "--no-cache"]) == 1
    out = capsys.readouterr().out
    assert out.count("timeout") == 2 and "no candidate fits" in out


def test_bad_search_flags_exit_2(capsys):
    assert cli.main([*SEARCH, "--q-chunks", "3000"]) == 2
    assert "no chunk pair divides the local length 256" in capsys.readouterr().err
    assert cli.main([*SEARCH, "--memory", "lots"]) == 2
    assert "expected a size" in capsys.readouterr().err


def test_train_step_figure_matches_xla_memory_analysis():
    shape = ModelStepShape.from_options(model="tiny", seq=2048, q_chunk=64, kv_chunk=128)
    profile = profile_program("train-step", shape, target="cpu", devices=8)
    stats = lower(jax.devices(), "train-step", asdict(shape)).compile().memory_analysis()
    ours = stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes - stats.alias_size_in_bytes
    assert profile["figures"]["xla_total"] == ours
    assert stats.alias_size_in_bytes > 0, "the train state must be donated"


def test_speed_model_ranks_remat_and_chunks():
    target = get_target("a100-80gb")
    mesh = {"dp": 1, "fsdp": 1, "tp": 1, "sp": 8}
    config = get_config("mistral-7b", q_chunk=2048, kv_chunk=4096)
    full = predicted_seconds(config, 524_288, mesh, target)
    assert predicted_seconds(config.replace(remat_policy="save_dots"), 524_288, mesh, target) < full
    # On a GPU attention is cuDNN's: the chunks tie. Our XLA kernel pays per block.
    assert predicted_seconds(config.replace(q_chunk=512, kv_chunk=512), 524_288, mesh, target) == full
    xla = config.replace(attention_kernel="xla")
    assert predicted_seconds(xla.replace(q_chunk=512, kv_chunk=512), 524_288, mesh, target) > predicted_seconds(xla, 524_288, mesh, target)
    # A zigzag ring balances the causal work, under either kernel: the busiest device does less.
    for c in (config, xla):
        assert predicted_seconds(c.replace(sequence_layout="zigzag"), 524_288, mesh, target) < predicted_seconds(c, 524_288, mesh, target)


def test_speed_model_counts_documents_and_their_calls():
    target = get_target("h200-141gb")
    mesh = {"dp": 1, "fsdp": 1, "tp": 1, "sp": 1}
    config = get_config("mistral-7b", num_layers=8, remat_policy="save_dots_attention")
    whole = predicted_seconds(config, 65_536, mesh, target)
    documents = [8192] * 8
    packed = predicted_seconds(config, 65_536, mesh, target, documents=documents)
    assert packed < whole  # attention within documents is an eighth of the causal row's
    # 64 documents: one call per 4 slots over the whole shard pads 4 x 64K slots per call; blocks
    # of 16K pad a quarter of it (measured on the H200: 1.618 s vs 1.690 s, bench_speed_docs_f1/f2).
    many = [1024] * 64
    blocks = predicted_seconds(config, 65_536, mesh, target, documents=many)
    assert blocks < predicted_seconds(config.replace(document_block=0), 65_536, mesh, target, documents=many)
    # Padding attends nothing: a row half padding costs less than the row of its documents doubled.
    half = predicted_seconds(config, 65_536, mesh, target, documents=[8192] * 4, padding=32_768)
    assert half < packed


def test_speed_model_knows_every_remat_policy_and_what_each_skips():
    config, target = get_config("mistral-7b"), get_target("a100-80gb")
    mesh = {"dp": 1, "fsdp": 1, "tp": 1, "sp": 8}
    seconds = {p: predicted_seconds(config.replace(remat_policy=p), 524_288, mesh, target) for p in REMAT_POLICIES}
    # At 512K attention is most of the step: keeping its output saves more than keeping the dots.
    assert seconds["none"] == seconds["save_dots_attention"] < seconds["save_attention"] < seconds["save_dots"] < seconds["full"]


def test_search_compiles_fastest_first_prunes_what_cannot_fit_and_skips_what_is_slower(monkeypatch):
    """Memory here: full 1, save_attention 2, save_dots_attention 3 (x2 for one whole-shard call);
    the budget holds 2. The fastest predicted, save_dots_attention, does not fit; its one-call
    variant is heavier, so it is pruned, not compiled; save_attention fits, so full is skipped."""
    from hloscope import search

    weight = {"full": 1, "save_attention": 2, "save_dots_attention": 3}
    compiled = []

    def fake_evaluate(space, c, target, devices, budget, margin, **_):
        compiled.append(c)
        total = weight[c.remat_policy] * (2 if c.document_block == 0 else 1)
        return search.Outcome(c, "ok", figures={"xla_total": total}, fits=total <= budget,
                              headroom_bytes=budget - total, predicted_s=space.predicted_seconds(c))

    monkeypatch.setattr(search, "evaluate", fake_evaluate)
    base = ModelStepShape(model="mistral-7b", seq=65_536, layers=8)
    space = TrainStepSpace(base, get_target("h200-141gb"), 1, candidates({1: 65_536}, tuple(weight), blocks=(16384, 0), cudnn=True))
    outcomes = {(o.candidate.remat_policy, o.candidate.document_block): o.status
                for o in search.run_search(space, get_target("h200-141gb"), 1, budget=2, margin=0.0, order=space.order)}
    assert [(c.remat_policy, c.document_block) for c in compiled] == [("save_dots_attention", 16384), ("save_attention", 16384)]
    assert outcomes[("save_dots_attention", 0)] == "pruned" and outcomes[("save_attention", 16384)] == "ok"
    assert outcomes[("full", 16384)] == outcomes[("full", 0)] == outcomes[("save_attention", 0)] == "skipped"


def test_a_policy_that_keeps_more_needs_at_least_the_memory_of_one_that_keeps_less():
    space = TrainStepSpace(ModelStepShape(model="tiny", seq=2048), get_target("cpu"), 8, [])
    c = {p: candidates({1: 256}, (p,), (64,), (128,))[0] for p in REMAT_POLICIES}
    for i, lighter in enumerate(REMAT_POLICIES):
        assert all(space.needs_at_least(c[heavier], c[lighter]) for heavier in REMAT_POLICIES[i:])
        assert not any(space.needs_at_least(c[lighter_still], c[lighter]) for lighter_still in REMAT_POLICIES[:i])


def test_max_seq_finds_the_longest_length_and_writes_its_plan(tmp_path, capsys):
    longest, plan = tmp_path / "longest.json", tmp_path / "plan.json"
    args = [*SEARCH, "--seq", "1024", "--max-seq", "--max-seq-limit", "3072", "--out", str(plan), "--max-seq-out", str(longest)]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "longest that fits (multiples of 1,024, up to 3,072): 3,072 tokens" in out and "--max-seq-limit" in out
    written, at_seq = json.loads(longest.read_text()), json.loads(plan.read_text())
    assert (written["seq_len"], at_seq["seq_len"]) == (3072, 1024)
    assert written["execution"]["remat_policy"] == "full" and written["predicted"]["xla_total"] > at_seq["predicted"]["xla_total"]
    # The next plans down, for a run out of memory on a smaller card: shorter probes that fit, most memory first.
    alternatives = written["predicted"]["alternatives"]
    assert alternatives and all(a["seq_len"] < 3072 and a["xla_total"] < written["predicted"]["xla_total"] for a in alternatives)
    assert [a["xla_total"] for a in alternatives] == sorted((a["xla_total"] for a in alternatives), reverse=True)
    assert written["target"]["margin"] == 0.1 and written["target"]["runtime_overhead_bytes"] == 0  # cpu: none
    # A budget between the two lengths' needs: the longest is shorter, and the next length up does not fit.
    budget = (written["predicted"]["xla_total"] + at_seq["predicted"]["xla_total"]) // 2
    assert cli.main([*args, "--memory", str(int(budget / 0.9))]) == 0
    out = capsys.readouterr().out
    assert "predicted not to fit" in out and json.loads(longest.read_text())["seq_len"] in (1024, 2048)
    assert cli.main([*SEARCH, "--max-seq-out", str(longest)]) == 2
    assert "--max-seq-out needs --max-seq" in capsys.readouterr().err


def test_max_seq_searches_below_a_length_that_does_not_fit(tmp_path, capsys):
    longest = tmp_path / "longest.json"
    assert cli.main([*SEARCH, "--seq", "1024", "--out", str(tmp_path / "small.json")]) == 0
    small = json.loads((tmp_path / "small.json").read_text())["predicted"]["xla_total"]
    # A budget that 1,024 tokens fit and 4,096 do not: the search at 4,096 fails (exit 1), and
    # --max-seq still finds the longest length below it and writes its plan.
    args = [*SEARCH, "--seq", "4096", "--memory", str(int(small * 1.05 / 0.9)), "--max-seq", "--max-seq-out", str(longest)]
    assert cli.main(args) == 1
    out = capsys.readouterr().out
    assert "no candidate fits tiny at 4,096 tokens" in out and "longest that fits" in out
    assert 1024 <= json.loads(longest.read_text())["seq_len"] < 4096
