"""Test-wide setup: 8 virtual CPU devices (set before jax is imported), hypothesis profiles, and
the `gpu_aot` fixture."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402
from hypothesis import HealthCheck, Phase, settings  # noqa: E402

# Every example of an attention property compiles a new program (seconds on 2 cores), so the
# default profile keeps example counts small; `HYPOTHESIS_PROFILE=thorough` runs many more.
_common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
# CI skips shrinking: one failing attention example can take minutes to shrink on 2 cores.
# 8 examples: the attention properties were a quarter of the suite's time at 12 (each example
# is a compile); every CI run draws new examples, and `thorough` runs 200.
settings.register_profile(
    "ci", max_examples=8, phases=(Phase.explicit, Phase.reuse, Phase.generate), **_common
)
settings.register_profile("thorough", max_examples=200, **_common)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def gpu_aot():
    """Skips a test that compiles for a GPU target where the gpu-aot extra is missing."""
    from hloscope.targets import MissingGpuAotError, check_gpu_aot

    try:
        check_gpu_aot()
    except MissingGpuAotError as missing:
        pytest.skip(str(missing))
