"""Issue 17, item 3: sharded StableHLO / unpartitioned HLO are labelled global, never per-device."""

from __future__ import annotations

from hloscope.hlo import parse_module
from hloscope.trace import trace_module

_SDY = """module @jit_f attributes {mhlo.num_partitions = 4 : i32, mhlo.num_replicas = 1 : i32} {
  sdy.mesh @mesh = <["x"=4]>
  func.func public @main(%arg0: tensor<512x512xf32> {sdy.sharding = #sdy.sharding<@mesh, [{}, {"x"}]>}) -> tensor<512x512xf32> {
    %0 = stablehlo.tanh %arg0 : tensor<512x512xf32>
    return %0 : tensor<512x512xf32>
  }
}
"""
_MHLO = """module @jit_f attributes {mhlo.num_partitions = 1 : i32} {
  func.func public @main(%arg0: tensor<8x4xf32> {mhlo.sharding = "{devices=[2,1]<=[2]}"}) -> tensor<8x4xf32> {
    %0 = stablehlo.tanh %arg0 : tensor<8x4xf32>
    return %0 : tensor<8x4xf32>
  }
}
"""
_HLO = """HloModule m

ENTRY e {
  p = f32[8,4] parameter(0), sharding={devices=[2,1]<=[2]}
  ROOT t = f32[8,4] tanh(p), sharding={devices=[2,1]<=[2]}
}
"""


def test_sdy_module_is_global():
    module = parse_module(_SDY)
    assert module.sizes_are_global is not None and "4 devices" in module.sizes_are_global
    assert "\n" not in module.sizes_are_global
    assert trace_module(module).sources["sizes_are_global"] == module.sizes_are_global


def test_mhlo_sharding_is_global():
    reason = parse_module(_MHLO).sizes_are_global
    assert reason is not None and "2 devices" in reason and "mhlo.sharding" in reason


def test_unpartitioned_hlo_is_global_and_scheduled_is_per_device():
    assert "2 devices" in parse_module(_HLO).sizes_are_global
    scheduled = _HLO.replace("HloModule m", "HloModule m, is_scheduled=true")
    assert parse_module(scheduled).sizes_are_global is None  # partitioned: shapes are per device


def test_unsharded_and_replicated_are_per_device():
    assert parse_module(_SDY.replace('"x"=4', '"x"=1').replace("num_partitions = 4", "num_partitions = 1")
                        ).sizes_are_global is None
    assert parse_module(_HLO.replace("devices=[2,1]<=[2]", "replicated")).sizes_are_global is None
    assert "sizes_are_global" not in trace_module(parse_module(_HLO.replace(
        ", sharding={devices=[2,1]<=[2]}", ""))).sources
