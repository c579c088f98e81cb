"""Which jax platform a command-line run uses when the user has not said (JAX_PLATFORMS).

With the gpu-aot extra installed (jax's CUDA plugin, for hloscope's deviceless GPU compiles) on
a machine without an NVIDIA driver, the first jax call prints the plugin's failed start as a
traceback, then runs on the CPU anyway. reftrain's commands say so up front instead: where no
NVIDIA device node or driver exists, they run on the CPU. A machine with a GPU (the device
nodes every NVIDIA driver and container runtime provide) is left to jax.
"""

from __future__ import annotations

import os

NVIDIA_SIGNS = ("/dev/nvidiactl", "/proc/driver/nvidia/version")


def cpu_unless_a_gpu_is_here() -> None:
    """Sets JAX_PLATFORMS=cpu when it is unset and this machine shows no NVIDIA driver; call it
    before jax is imported."""
    if "JAX_PLATFORMS" not in os.environ and not any(os.path.exists(path) for path in NVIDIA_SIGNS):
        os.environ["JAX_PLATFORMS"] = "cpu"
