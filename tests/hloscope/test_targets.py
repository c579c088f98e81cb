"""Targets: the shipped GPU configs carry the hardware facts, lookups fail helpfully, and the
gpu-aot check names the install command."""

from __future__ import annotations

import re

import pytest

from hloscope import targets
from hloscope.targets import (
    GPU_AOT_INSTALL,
    TARGETS,
    MissingGpuAotError,
    UnknownTargetError,
    check_gpu_aot,
    get_target,
)


def _device_info(config_text: str) -> dict[str, str]:
    """`name: value` pairs inside gpu_device_info (where each name occurs once), comments dropped."""
    block = re.search(r"^gpu_device_info \{\n(.*?)^\}", re.sub(r"#.*", "", config_text), flags=re.M | re.S)
    assert block, "no gpu_device_info block"
    return dict(re.findall(r"^\s*(\w+):\s*(\S+)", block.group(1), flags=re.M))


def test_known_targets() -> None:
    assert set(TARGETS) == {"cpu", "a100-80gb", "h100-80gb", "h200-141gb", "b200-180gb"}
    cpu = get_target("cpu")
    assert (cpu.platform, cpu.memory_bytes, cpu.config_text) == ("cpu", None, None)
    for name in ("a100-80gb", "h100-80gb", "h200-141gb", "b200-180gb"):
        target = get_target(name)
        assert target.platform == "cuda" and target.name == name
        assert target.config_text and target.memory_bytes
        # The config's memory and device string are what XLA compiles for.
        assert f"device_memory_size: {target.memory_bytes}" in target.config_text
        assert f'device_description_str: "{target.device_kind}"' in target.config_text


def test_unknown_target_lists_names() -> None:
    with pytest.raises(UnknownTargetError) as info:
        get_target("tpu-v9")
    assert isinstance(info.value, ValueError)
    for name in TARGETS:
        assert name in str(info.value)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a100-80gb", {"major": "8", "core_count": "108", "fpus_per_core": "64", "clock_rate_ghz": "1.41",
                       "device_memory_size": "85100068864", "memory_bandwidth": "2039040000000",
                       "l2_cache_size": "41943040", "shared_memory_per_core": "167936",
                       "shared_memory_per_block_optin": "166912"}),
        ("h100-80gb", {"major": "9", "core_count": "132", "fpus_per_core": "128", "clock_rate_ghz": "1.98",
                       "device_memory_size": "84929347584", "memory_bandwidth": "3352320000000",
                       "l2_cache_size": "52428800", "shared_memory_per_core": "233472",
                       "shared_memory_per_block_optin": "232448"}),
        # XLA's own specs/b200.txtpb.
        ("b200-180gb", {"major": "10", "core_count": "148", "fpus_per_core": "128", "clock_rate_ghz": "1.965",
                        "device_memory_size": "191514411008", "memory_bandwidth": "7672320000000",
                        "l2_cache_size": "132644864", "shared_memory_per_core": "233472",
                        "shared_memory_per_block_optin": "232448"}),
    ],
)
def test_gpu_config_carries_hardware_facts(name: str, expected: dict[str, str]) -> None:
    target = get_target(name)
    assert target.config_text is not None
    fields = _device_info(target.config_text)
    common = {"minor": "0", "shared_memory_per_block": "49152", "registers_per_core_limit": "65536",
              "registers_per_block_limit": "65536", "threads_per_block_limit": "1024",
              "threads_per_core_limit": "2048", "threads_per_warp": "32", "block_dim_limit_x": "2147483647",
              "block_dim_limit_y": "65535", "block_dim_limit_z": "65535"}
    for key, value in {**common, **expected}.items():
        assert fields.get(key) == value, key
    assert int(fields["device_memory_size"]) == target.memory_bytes
    assert 'platform_name: "CUDA"' in target.config_text
    assert f'device_description_str: "{target.device_kind}"' in target.config_text


def _fake_versions(monkeypatch: pytest.MonkeyPatch, versions: dict[str, str | None]) -> None:
    monkeypatch.setattr(targets, "_version", lambda dist: versions.get(dist))


def test_check_gpu_aot_rejects_a_plugin_of_another_version(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_versions(monkeypatch, {"jaxlib": "0.10.2", "jax-cuda12-plugin": "0.11.2", "jax-cuda12-pjrt": "0.10.2"})
    with pytest.raises(MissingGpuAotError) as info:
        check_gpu_aot()
    assert "0.11.2" in str(info.value) and GPU_AOT_INSTALL in str(info.value)


def test_check_gpu_aot_names_missing_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_versions(monkeypatch, {"jaxlib": "0.10.2"})
    with pytest.raises(MissingGpuAotError, match="jax-cuda12-plugin is not installed") as info:
        check_gpu_aot()
    assert 'pip install -e ".[gpu-aot]"' in str(info.value)


def test_check_gpu_aot_names_missing_ptxas(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    _fake_versions(monkeypatch, {"jaxlib": "0.10.2", "jax-cuda12-plugin": "0.10.2", "jax-cuda12-pjrt": "0.10.2"})
    monkeypatch.setattr(targets, "cuda_nvcc_dir", lambda: tmp_path)
    with pytest.raises(MissingGpuAotError, match="ptxas is missing"):
        check_gpu_aot()


def test_gpu_targets_judge_the_runtime_overhead_and_the_cpu_none():
    """`fits` adds what the runtime holds in the pool beyond XLA's total (measured on an H100)."""
    from hloscope.api import Profile
    from hloscope.targets import GPU_RUNTIME_OVERHEAD, TARGETS

    assert TARGETS["cpu"].runtime_overhead_bytes == 0
    assert all(t.runtime_overhead_bytes == GPU_RUNTIME_OVERHEAD for t in TARGETS.values() if t.platform == "cuda")
    profile = Profile({"label": "p", "figures": {"xla_total": 1000, "live_peak": 900},
                       "target": {"name": "h100-80gb", "runtime_overhead_bytes": 24}})
    assert profile.needed == 1024 and profile.fits(1024) and not profile.fits(1023)
