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
    assert not platform_choice.NATIVE_NOISE.search(done.stderr), done.stderr[-2000:]


@pytest.mark.parametrize("command", [["reftrain.eval", "--help"], ["reftrain.data", "--help"], ["reftrain.run", "--help"]])
def test_the_commands_print_none_of_the_cuda_plugins_start_up_lines(tmp_path, command):
    """With the gpu-aot extra on a CPU host, `import jax` makes jaxlib's CUDA modules write absl's
    "log messages before InitializeLog" and cudart_stub's "Could not find cuda drivers" to fd 2
    (three times); reftrain's commands filter them as hloscope's CLI does."""
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    done = subprocess.run([sys.executable, "-m", *command], capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert done.returncode == 0 and done.stdout, done.stderr[-2000:]
    assert done.stderr == "", done.stderr[-2000:]


def test_the_filter_keeps_every_other_line(capfd):
    with platform_choice.native_noise_filtered():
        os.write(2, b"I0000 00:00:1.0 1 cudart_stub.cc:31] Could not find cuda drivers on your machine.\n")
        os.write(2, b"a line of the user's\n")
    assert capfd.readouterr().err == "a line of the user's\n"


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
