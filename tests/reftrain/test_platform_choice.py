"""reftrain's commands on a machine without an NVIDIA driver: the CPU, without the CUDA plugin's
traceback (the gpu-aot extra installs the plugin; CI has no GPU)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from reftrain import platform_choice


def test_a_command_on_a_machine_without_a_gpu_prints_no_traceback(tmp_path):
    if any(os.path.exists(path) for path in platform_choice.NVIDIA_SIGNS):
        pytest.skip("this machine has an NVIDIA driver")
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    done = subprocess.run([sys.executable, "-m", "reftrain.run", "--phase", "1", "--dry-run"], capture_output=True,
                          text=True, timeout=300, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and "plugin configuration error" not in done.stderr


def test_the_user_choice_and_a_gpu_are_left_alone(monkeypatch):
    monkeypatch.setenv("JAX_PLATFORMS", "cuda")
    platform_choice.cpu_unless_a_gpu_is_here()
    assert os.environ["JAX_PLATFORMS"] == "cuda"
    monkeypatch.delenv("JAX_PLATFORMS")
    monkeypatch.setattr(platform_choice, "NVIDIA_SIGNS", (str(__file__),))  # a path that exists: "a driver"
    platform_choice.cpu_unless_a_gpu_is_here()
    assert "JAX_PLATFORMS" not in os.environ
    monkeypatch.setattr(platform_choice, "NVIDIA_SIGNS", ("/nonexistent/nvidiactl",))
    platform_choice.cpu_unless_a_gpu_is_here()
    assert os.environ["JAX_PLATFORMS"] == "cpu"
