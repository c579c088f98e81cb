"""`--tensorboard DIR`: a tiny run (configured by a run.toml, as a user would) writes event
files whose scalars, read back through the TFRecord framing and TensorBoard's Event protobuf,
are the ones metrics.jsonl logged."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import pytest

from reftrain import run as run_cli
from reftrain.train.tensorboard import SCALARS

pytest.importorskip("tensorboardX", reason="the tensorboard extra (in dev) is not installed")
from tensorboardX.proto import event_pb2  # noqa: E402

SMALL = """
[set]
hidden_size = 64
intermediate_size = 128
num_q_heads = 4
num_kv_heads = 2
head_dim = 16
stages = "128x3x1"
probe_every = 2
"""


def read_scalars(directory: Path) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} of every event file under `directory`. TFRecord framing: uint64
    length, uint32 masked crc of it, the record, its uint32 masked crc (crc32c; not checked:
    the protobuf parse fails on a torn record)."""
    scalars: dict[str, dict[int, float]] = {}
    files = sorted(directory.rglob("events.out.tfevents.*"))
    assert files, f"no event file under {directory}"
    for path in files:
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack_from("<Q", data, offset)
            record = data[offset + 12: offset + 12 + length]
            assert len(record) == length, f"{path} ends in a torn record"
            offset += 12 + length + 4
            event = event_pb2.Event.FromString(record)
            for value in event.summary.value:
                scalars.setdefault(value.tag, {})[event.step] = value.simple_value
    return scalars


def test_tensorboard_holds_the_logged_scalars(tmp_path, capsys):
    board = tmp_path / "tb"
    toml = tmp_path / "run.toml"
    options = f'phase = 1\nrun_dir = "{tmp_path / "run"}"\ntensorboard = "{board}"\nno_progress = true\npeak_tflops = 1.0\n'
    toml.write_text(options + SMALL)
    assert run_cli.main(["--config", str(toml), "--max-steps", "2"]) == 0
    logged = [json.loads(line) for line in (tmp_path / "run" / "phase1" / "metrics.jsonl").read_text().splitlines()]
    scalars = read_scalars(board)
    assert len(logged) == 2
    for key, tag in SCALARS.items():
        expected = {r["step"]: r[key] for r in logged if r.get(key) is not None}
        if key == "probe_niah":  # every probe_every (2) steps and at the last: step 1 only
            assert scalars[tag].keys() == expected.keys() == {1} and 0 <= expected[1] <= 1, tag
            continue
        if key == "peak_bytes":  # CPU has no memory_stats: None in metrics.jsonl, no scalar
            assert tag not in scalars and not expected
            continue
        assert scalars[tag].keys() == expected.keys() == {0, 1}, tag
        assert all(scalars[tag][s] == pytest.approx(expected[s], rel=1e-6) for s in expected), tag
    assert (tmp_path / "run" / "phase1" / "run.toml").read_text() == toml.read_text()
