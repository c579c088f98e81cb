"""analyses/xla_heap_gaps.py: gaps in XLA's temp allocation from a small hand-written dump pair."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "analyses"))

import xla_heap_gaps  # noqa: E402

# Three 16-byte temporaries: a (0-1) and b (1-2) at offsets 0 and 32, c (2-3) reusing a's offset;
# b's alias b2 (a while's phi) shares its chunk. At most 32 bytes live at once (a and b, or b
# and c), in a 48-byte heap: a 16-byte gap at offset 16.
_ASSIGNMENT = """BufferAssignment:
allocation 0: size 64, parameter 0, shape |f32[16]| at ShapeIndex {}:
allocation 1: size 48, preallocated-temp:
 value: <1 a @0> (size=16,offset=0): f32[4]{0}
 value: <2 b @0> (size=16,offset=32): f32[4]{0}
 value: <3 c @0> (size=16,offset=0): f32[4]{0}
 value: <4 w{1} (phi) @0> (size=16,offset=32): f32[4]{0}
"""
_LIVE_RANGE = """HloLiveRange (max 3):
  InstructionSequence:
    0:p
    1:a
    2:b
    3:c
  BufferLiveRange:
    p{}:0-3
    a{}:0-1
    b{}:1-2
    c{}:2-3
    w{1}:2-2
  Live ranges at 1 (peak):
    a{}: 16 bytes (cumulative: 16 bytes)
"""


def test_gap_between_chunks_and_aliases_counted_once():
    found = xla_heap_gaps.heap_gaps(_ASSIGNMENT, _LIVE_RANGE)
    assert (found["temp_bytes"], found["live_bytes"], found["at"], found["instruction"]) == (48, 32, 1, "a")
    assert [(v["value"], v["offset"]) for v in found["live"]] == [("a{}", 0), ("b{}", 32)]


def test_a_folder_without_dumps_is_one_line_and_exit_2(tmp_path, capsys):
    assert xla_heap_gaps.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no *after_optimizations-buffer-assignment.txt" in err


def test_reads_a_dump_folder(tmp_path, capsys):
    (tmp_path / "module_0001.jit_f.cpu_after_optimizations-buffer-assignment.txt").write_text(_ASSIGNMENT)
    (tmp_path / "module_0001.jit_f.cpu_after_optimizations-live-range.txt").write_text(_LIVE_RANGE)
    assert xla_heap_gaps.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "temp allocation: 48 bytes; most live at once: 32 bytes (at 1: a); gaps and padding: 16 bytes" in out
    assert "gap" in out


def test_replay_packs_the_gap_away_and_keeps_a_buffers_values_together():
    # a (0-1) first at 0, b with its alias w (1-2) next to it at 16, c (2-3) back at 0: 32 bytes
    # where the hand-written layout took 48. Were w not merged into b's buffer it could not
    # change this; a w of 32 bytes (the buffer's size is its largest value's) would make it 48.
    assert xla_heap_gaps.replay_layout(_ASSIGNMENT, _LIVE_RANGE, "spatial") == 32
    assert xla_heap_gaps.replay_layout(_ASSIGNMENT, _LIVE_RANGE, "temporal") == 32
    wide = _ASSIGNMENT.replace("<4 w{1} (phi) @0> (size=16", "<4 w{1} (phi) @0> (size=32")
    assert xla_heap_gaps.replay_layout(wide, _LIVE_RANGE, "spatial") == 48
