"""Which jax platform a command-line run uses when the user has not said (JAX_PLATFORMS).

With the gpu-aot extra installed (jax's CUDA plugin, for hloscope's deviceless GPU compiles) on
a machine without an NVIDIA driver, the first jax call prints the plugin's failed start as a
traceback, then runs on the CPU anyway. reftrain's commands say so up front instead: where no
NVIDIA device node or driver exists, they run on the CPU. A machine with a GPU (the device
nodes every NVIDIA driver and container runtime provide) is left to jax.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

NVIDIA_SIGNS = ("/dev/nvidiactl", "/proc/driver/nvidia/version")


def cpu_unless_a_gpu_is_here() -> None:
    """Sets JAX_PLATFORMS=cpu when it is unset and this machine shows no NVIDIA driver; call it
    before jax is imported."""
    if "JAX_PLATFORMS" not in os.environ and not any(os.path.exists(path) for path in NVIDIA_SIGNS):
        os.environ["JAX_PLATFORMS"] = "cpu"


#: What jaxlib's CUDA modules write to file descriptor 2 as `import jax` loads them on a machine
#: without a driver (three times: solver, sparse, prng). hloscope/_quiet.py filters the same
#: lines for hloscope's CLI; neither package may import the other (DESIGN.md).
NATIVE_NOISE = re.compile(
    r"All log messages before absl::InitializeLog\(\) is called|cudart_stub\.cc:\d+\]|"
    r"Unable to register cu(?:DNN|FFT|BLAS) factory|computation placer already registered"
)


@contextmanager
def native_noise_filtered() -> Iterator[None]:
    """Captures file descriptor 2 for the block; re-emits every captured line but NATIVE_NOISE.
    Wrap where a command imports jax and where its backends start (the plugin's second try)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = [line for line in capture.read().decode(errors="replace").splitlines() if not NATIVE_NOISE.search(line)]
            if kept:
                print("\n".join(kept), file=sys.stderr)


def import_jax_quietly():
    """Imports jax and starts its backends inside native_noise_filtered(); returns jax. Call it
    where a command first needs jax (after jax.distributed.initialize, where there is one)."""
    with native_noise_filtered():
        import jax

        jax.devices()
    return jax
