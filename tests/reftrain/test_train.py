"""`python -m reftrain.run`: phases chain, losses fall, SIGKILL + resume is bit-identical,
two processes train what one does, bad plans and non-finite losses stop cleanly."""

import dataclasses
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reftrain import run as run_cli
from reftrain.phases import get_phase

ROOT = Path(__file__).resolve().parents[2]
# A narrower tiny model (same vocabulary, GQA kept) so each test compiles in seconds.
SMALL = [f"--set={kv}" for kv in ("hidden_size=64", "intermediate_size=128", "num_q_heads=4", "num_kv_heads=2", "head_dim=16")]


def losses(run_dir: Path, phase: int = 1) -> list[float]:
    lines = (run_dir / f"phase{phase}" / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines]


def cli(*args: str, devices: int = 8, extra_env: dict | None = None) -> list[str]:
    """The command line and environment of a `python -m reftrain.run` subprocess."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    env.update(extra_env or {})
    return [sys.executable, "-m", "reftrain.run", *args, "--no-progress", *SMALL], env


def test_phases_chain_with_their_own_settings(tmp_path, capsys):
    for number in (1, 2, 3, 4):  # each phase stops after 1 step, so chaining it must be asked for
        args = ["--phase", str(number), "--run-dir", str(tmp_path), "--max-steps", "1", "--chain-unfinished"]
        assert run_cli.main([*args, "--no-progress", *SMALL]) == 0
        start_line = capsys.readouterr().err.strip().splitlines()[0]
        if number > 1:
            assert start_line.startswith(f"phase {number}: starting from phase {number - 1}'s UNFINISHED checkpoint (step 1 of ")
    for number in (1, 2, 3, 4):
        saved = json.loads((tmp_path / f"phase{number}" / "config.json").read_text())
        spec = get_phase("tiny", number)
        assert saved["model"]["rope_theta"] == spec.rope_theta == (25e6 if number == 1 else 75e6)
        assert saved["model"]["rope_dtype"] == spec.rope_dtype == "float32"
        assert [tuple(s.values()) for s in saved["phase"]["stages"]] == [(s.seq_len, s.sequences, s.batch_size) for s in spec.stages]
        if number > 1:
            assert saved["started_from"] == f"{tmp_path / f'phase{number - 1}' / 'checkpoints'}/1"
        assert len(losses(tmp_path, number)) == 1
    assert json.loads((tmp_path / "phase4" / "metrics.jsonl").read_text().splitlines()[0])["seq_len"] == 256


def test_loss_falls(tmp_path):
    assert run_cli.main(["--phase", "1", "--run-dir", str(tmp_path), "--max-steps", "8", "--no-progress", *SMALL]) == 0
    history = losses(tmp_path)
    assert history[-1] < history[0] - 0.1, history


def test_a_later_phase_on_a_fresh_machine_starts_from_random(tmp_path, capsys):
    """`--phase 3` with nothing before it trains from a random initialisation and says so."""
    assert run_cli.main(["--phase", "3", "--run-dir", str(tmp_path), "--max-steps", "1", "--no-progress", *SMALL]) == 0
    err = capsys.readouterr().err
    assert f"phase 3: starting from a random initialisation (seed 0): no checkpoint of phase 2 in {tmp_path / 'phase2'}" in err
    saved = json.loads((tmp_path / "phase3" / "config.json").read_text())
    assert saved["started_from"] == "random initialisation" and saved["start"]["kind"] == "random"
    assert saved["total_steps"] == get_phase("tiny", 3).steps() and len(losses(tmp_path, 3)) == 1


def test_an_unfinished_previous_phase_is_not_chained_silently(tmp_path, capsys):
    base = ["--run-dir", str(tmp_path), "--set", "stages=128x4x1", "--no-progress", *SMALL]
    assert run_cli.main(["--phase", "1", "--max-steps", "1", *base]) == 0
    capsys.readouterr()
    assert run_cli.main(["--phase", "2", "--dry-run", *base]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["start"]["kind"] == "random" and "it is unfinished (step 1 of 4 in" in shown["start"]["line"]
    assert not (tmp_path / "phase2").exists()
    assert run_cli.main(["--phase", "1", *base]) == 0  # finish phase 1: 3 more steps
    capsys.readouterr()
    assert run_cli.main(["--phase", "2", "--max-steps", "1", *base]) == 0
    assert "phase 2: starting from phase 1's final checkpoint (step 4 of 4, " in capsys.readouterr().err
    assert json.loads((tmp_path / "phase2" / "config.json").read_text())["started_from"] == str(tmp_path / "phase1" / "checkpoints" / "4")


def test_a_failed_start_leaves_nothing_behind(tmp_path, capsys):
    """An --init-from whose shapes do not fit fails after the phase directory was made: it goes."""
    import jax

    from reftrain import hf, model
    from reftrain.config import get_config

    config = get_config("tiny", hidden_size=32, intermediate_size=64, num_q_heads=2, num_kv_heads=1, head_dim=16)
    hf.save_checkpoint(config, model.init_params(config, jax.random.key(0)), tmp_path / "hf", dtype="float32")
    run = tmp_path / "runs" / "tiny"
    assert run_cli.main(["--phase", "3", "--run-dir", str(run), "--init-from", str(tmp_path / "hf"), "--no-progress", *SMALL]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "plan, message",
    [
        ({"schema": "hloscope.plan/99"}, "unknown plan schema"),
        ({"schema": "hloscope.plan/1", "model": "mistral-7b", "seq_len": 128, "mesh": {"dp": 1, "fsdp": 1, "tp": 1, "sp": 8},
          "q_chunk": 16, "kv_chunk": 16, "remat_policy": "full"}, "plan was made for model 'mistral-7b'"),
        ({"schema": "hloscope.plan/1", "model": "tiny", "seq_len": 128, "mesh": {"dp": 1, "fsdp": 4, "tp": 1, "sp": 8},
          "q_chunk": 16, "kv_chunk": 16, "remat_policy": "full"}, "needs 32 devices, this machine has 8"),
        ({"schema": "hloscope.plan/2", "model": "tiny", "seq_len": 128, "mesh": {"dp": 1, "fsdp": 1, "tp": 1, "sp": 8},
          "execution": {"q_chunk": 16, "document_block": -4}}, "plan execution: document_block must be >= 0"),
        ({"schema": "hloscope.plan/2", "model": "tiny", "seq_len": 128, "mesh": {"dp": 1, "fsdp": 1, "tp": 1, "sp": 8},
          "execution": {}, "target": {"margin": 1.5}}, "plan target.margin must be a number in [0, 1)"),
    ],
)
def test_bad_plans_are_refused(tmp_path, capsys, plan, message):
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    assert run_cli.main(["--phase", "1", "--run-dir", str(tmp_path / "run"), "--plan", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not (tmp_path / "run").exists()


def test_a_plan_shorter_than_the_phase_runs_its_stages_at_the_plan_length(tmp_path, capsys):
    """A plan searched at a shorter length (the longest that fits a card) runs the phase at it,
    keeping the phase's tokens, and says so."""
    phase = get_phase("tiny", 1)
    short = 128
    assert max(stage.seq_len for stage in phase.stages) > short
    plan = {"schema": "hloscope.plan/2", "model": "tiny", "seq_len": short, "mesh": {"dp": 1, "fsdp": 1, "tp": 1, "sp": 8},
            "execution": {"q_chunk": 16, "kv_chunk": 16}}
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    assert run_cli.main(["--phase", "1", "--run-dir", str(tmp_path / "run"), "--plan", str(tmp_path / "plan.json"), "--dry-run"]) == 0
    captured = capsys.readouterr()
    stages = json.loads(captured.out)["phase"]["stages"]
    assert max(stage["seq_len"] for stage in stages) == short
    assert sum(stage["seq_len"] * stage["sequences"] for stage in stages) >= phase.tokens
    assert f"run at {short:,}" in captured.err


def test_dry_run_shows_the_plan(tmp_path, capsys):
    assert run_cli.main(["--phase", "3", "--run-dir", str(tmp_path), "--dry-run", "--set", "q_chunk=32"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["plan"]["mesh"] == {"dp": 1, "fsdp": 1, "tp": 1, "sp": 8} and shown["model"]["q_chunk"] == 32
    assert shown["model"]["rope_theta"] == 75e6 and shown["steps"] == get_phase("tiny", 3).steps()
    assert shown["model"]["compute_dtype"] == "float32", "on CPU the run computes in float32 unless told"
    assert run_cli.main(["--phase", "3", "--run-dir", str(tmp_path), "--dry-run", "--set", "compute_dtype=bfloat16"]) == 0
    assert json.loads(capsys.readouterr().out)["model"]["compute_dtype"] == "bfloat16"


def test_grad_accum_flag_sets_the_step_count_and_the_feed(tmp_path, capsys):
    """--grad-accum reaches the phase, so the step count and the data feed agree (it used to
    reach only the feed, and the loop asked for steps the feed did not have)."""
    assert run_cli.main(["--phase", "1", "--run-dir", str(tmp_path), "--dry-run", "--grad-accum", "2"]) == 0
    shown = json.loads(capsys.readouterr().out)
    phase = get_phase("tiny", 1)
    assert shown["steps"] == dataclasses.replace(phase, grad_accum=2).steps() < phase.steps()
    for flag in ("--grad-accum", "--save-every", "--keep", "--max-steps"):  # 0 used to divide by zero (save-every)
        with pytest.raises(SystemExit) as exit_info:
            run_cli.main(["--phase", "1", "--run-dir", str(tmp_path / "r"), flag, "0"])
        assert exit_info.value.code == 2
        assert capsys.readouterr().err == f"error: {flag} must be positive, got 0 (see --help)\n"
    assert not (tmp_path / "r").exists()


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    args = ["--phase", "1", "--run-dir", str(tmp_path), "--save-every", "1", "--max-steps", "6", "--no-progress", *SMALL]
    assert run_cli.main([*args, "--set", "learning_rate=1e30", "--set", "warmup_steps=0", "--set", "grad_clip=1e30"]) == 2
    err = capsys.readouterr().err
    assert "is not finite; stopped, last good checkpoint: step" in err
    good = int(err.split("last good checkpoint: step ")[1].split()[0])
    assert sorted(int(p.name) for p in (tmp_path / "phase1" / "checkpoints").iterdir() if p.name.isdigit())[-1] == good
    assert all(loss == loss for loss in losses(tmp_path)), "no NaN is logged"


KILL_SEED = 18  # the kill point is drawn from this seed, so a failure reproduces


def _complete_steps(checkpoints: Path) -> list[int]:
    """Steps whose checkpoint is complete: orbax renames a step's directory into place last."""
    return sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit()) if checkpoints.is_dir() else []


def test_sigkill_then_resume_gives_the_same_losses(tmp_path):
    steps = ["--phase", "1", "--set", "stages=128x12x1", "--max-steps", "12", "--save-every", "1"]
    command, env = cli(*steps, "--run-dir", str(tmp_path / "straight"))
    subprocess.run(command, env=env, check=True, capture_output=True, timeout=600)
    reference = losses(tmp_path / "straight")

    # Kill right after checkpoint `target` completes, so there is always one to resume from.
    target = random.Random(KILL_SEED).randint(2, 9)
    killed = tmp_path / "killed"
    checkpoints = killed / "phase1" / "checkpoints"
    command, env = cli(*steps, "--run-dir", str(killed))
    victim = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and victim.poll() is None and not any(s >= target for s in _complete_steps(checkpoints)):
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL, f"the run ended (exit {victim.returncode}) before it was killed"
    complete = _complete_steps(checkpoints)
    assert complete and complete[-1] >= target, f"no checkpoint at or after step {target} before the kill"
    assert complete[-1] < 12, "killed mid-run: the last step was not checkpointed yet"
    assert all((checkpoints / str(s) / "state").is_dir() and (checkpoints / str(s) / "extra").is_dir() for s in complete)

    subprocess.run(command, env=env, check=True, capture_output=True, timeout=600)
    assert losses(killed) == reference, f"killed after checkpoint {complete[-1]} (target {target})"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_train_what_one_does(tmp_path):
    plan = {"schema": "hloscope.plan/1", "model": "tiny", "seq_len": 128, "mesh": {"dp": 1, "fsdp": 2, "tp": 1, "sp": 4},
            "q_chunk": 16, "kv_chunk": 16, "remat_policy": "full"}
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    steps = ["--phase", "1", "--set", "stages=128x6x2", "--plan", str(tmp_path / "plan.json"), "--max-steps", "3"]
    command, env = cli(*steps, "--run-dir", str(tmp_path / "one"))
    subprocess.run(command, env=env, check=True, capture_output=True, timeout=600)

    port = _free_port()
    workers = []
    for process in range(2):
        command, env = cli(*steps, "--run-dir", str(tmp_path / "two"), "--coordinator", f"localhost:{port}",
                           "--num-processes", "2", "--process-id", str(process), devices=4)
        workers.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    for worker in workers:
        out, _ = worker.communicate(timeout=600)
        assert worker.returncode == 0, out.decode()[-2000:]
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(one) == len(two) == 3
    assert two == pytest.approx(one, rel=1e-5)


def test_init_from_a_hugging_face_directory(tmp_path):
    """Phase 1 starts from exported weights: its first loss is the loss of those weights."""
    import jax

    from reftrain import hf, model
    from reftrain.config import get_config

    config = get_config("tiny", hidden_size=64, intermediate_size=128, num_q_heads=4, num_kv_heads=2, head_dim=16)
    params = model.init_params(config, jax.random.key(7))
    hf.save_checkpoint(config, params, tmp_path / "hf", dtype="float32")
    args = ["--phase", "1", "--set", "stages=128x4x1", "--max-steps", "1", "--no-progress", *SMALL]
    assert run_cli.main([*args, "--run-dir", str(tmp_path / "a"), "--init-from", str(tmp_path / "hf")]) == 0
    assert run_cli.main([*args, "--run-dir", str(tmp_path / "b")]) == 0
    saved = json.loads((tmp_path / "a" / "phase1" / "config.json").read_text())
    assert saved["started_from"] == str(tmp_path / "hf")
    assert losses(tmp_path / "a") != losses(tmp_path / "b"), "the imported weights were not used"


def test_bad_command_lines_get_one_line(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert run_cli.main(["--phase", "1", "--run-dir", str(tmp_path / "r"), "--init-from", str(missing), "--no-progress", *SMALL]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such directory" in err and not missing.exists()
    with pytest.raises(SystemExit) as exit_info:
        run_cli.main(["--phase", "5"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "invalid choice" in err


def test_max_seconds_stops_at_a_step_with_a_checkpoint_and_a_second_call_resumes(tmp_path, capsys):
    """A job's time limit: `--max-seconds 0.001` stops after the first step (which compiles) and
    saves there; the next call resumes from that checkpoint, not from random."""
    base = ["--phase", "1", "--run-dir", str(tmp_path), "--set", "stages=128x3x1", "--no-progress", *SMALL]
    assert run_cli.main([*base, "--max-seconds", "0.001"]) == 0
    assert (tmp_path / "phase1" / "checkpoints" / "1").is_dir() and len(losses(tmp_path)) == 1
    capsys.readouterr()
    assert run_cli.main(base) == 0
    assert "resuming from its own checkpoint at step 1 of 3" in capsys.readouterr().err
    assert len(losses(tmp_path)) == 3
    with pytest.raises(SystemExit) as exit_:
        run_cli.main([*base, "--max-seconds", "0"])
    assert exit_.value.code == 2 and "--max-seconds must be positive" in capsys.readouterr().err
