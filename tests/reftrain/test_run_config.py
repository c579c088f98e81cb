"""`--config run.toml`: options and a [set] table, the command line and --set winning over it,
bad files refused with one line and exit 2 before anything is written."""

from __future__ import annotations

import json

import pytest

from reftrain import run as run_cli


def _dry(tmp_path, capsys, toml: str, *argv: str) -> dict:
    (tmp_path / "run.toml").write_text(toml)
    assert run_cli.main(["--config", str(tmp_path / "run.toml"), "--dry-run", *argv]) == 0
    return json.loads(capsys.readouterr().out)


def test_the_file_sets_options_and_fields(tmp_path, capsys):
    shown = _dry(tmp_path, capsys, 'phase = 3\ngrad-accum = 2\nseed = 4\n[set]\nlearning_rate = 2e-4\nq_chunk = 32\n'
                 'stages = "256x8x2"\nrope_dtype = "bfloat16"\n')
    assert shown["phase"]["number"] == 3 and shown["grad_accum"] == 2 and shown["seed"] == 4
    assert shown["phase"]["learning_rate"] == 2e-4 and shown["model"]["q_chunk"] == 32
    assert shown["model"]["rope_dtype"] == "bfloat16" and shown["steps"] == 2
    assert shown["run_config"] == str(tmp_path / "run.toml")


def test_the_command_line_and_set_win(tmp_path, capsys):
    shown = _dry(tmp_path, capsys, 'phase = 3\nseed = 4\n[set]\nlearning_rate = 2e-4\nq_chunk = 32\n',
                 "--phase", "2", "--seed", "9", "--set", "q_chunk=64")
    assert shown["phase"]["number"] == 2 and shown["seed"] == 9
    assert shown["model"]["q_chunk"] == 64 and shown["phase"]["learning_rate"] == 2e-4


@pytest.mark.parametrize(
    "toml, message",
    [
        ("phase = 1\nspeed = 3\n", "unknown option 'speed'"),
        ("phase = 'one'\n", "phase must be an integer, got 'one'"),
        ("phase = 7\n", "phase must be 0-4, got 7"),
        ("phase = 1\nmax_steps = 2.5\n", "max_steps must be an integer, got 2.5"),
        ("phase = 1\n[set]\nnum_layers = 1.5\n", "num_layers must be an integer, got 1.5"),
        ("phase = 1\n[set]\nlearning_rate = true\n", "learning_rate must be a number, got True"),
        ("phase = 1\n[set]\nwings = 2\n", "wings: not a phase or model field"),
        ("phase = 1\nset = 3\n", "[set] must be a table"),
        ("phase = [1\n", "is not TOML"),
        ("seed = 1\n", "--phase is required"),
    ],
)
def test_bad_files_get_one_line_and_write_nothing(tmp_path, capsys, toml, message):
    (tmp_path / "run.toml").write_text(toml)
    argv = ["--config", str(tmp_path / "run.toml"), "--run-dir", str(tmp_path / "run"), "--no-progress"]
    try:
        code = run_cli.main(argv)
    except SystemExit as exit_info:  # argparse-level errors exit from parse_args
        code = exit_info.code
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "run").exists()


def test_a_missing_file_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli.main(["--config", str(tmp_path / "nope.toml"), "--phase", "1"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"error: --config {tmp_path / 'nope.toml'}: no such file\n"
