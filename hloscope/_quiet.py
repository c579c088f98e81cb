"""Keep native start-up noise off the user's terminal.

Loading jax with the CUDA plugin installed makes C++ code write absl's "log messages before
InitializeLog" warning and cudart_stub's "Could not find cuda drivers" straight to file
descriptor 2, around Python's sys.stderr. hloscope's own commands compile in a worker whose
output goes to a log; where the CLI process itself must import jax (the search planner), it does
so inside `native_noise_filtered()`, which drops those lines and passes everything else on.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

NOISE = re.compile(
    r"All log messages before absl::InitializeLog\(\) is called|cudart_stub\.cc:\d+\]|"
    r"Unable to register cu(?:DNN|FFT|BLAS) factory|computation placer already registered"
)


@contextmanager
def native_noise_filtered() -> Iterator[None]:
    """Captures file descriptor 2 for the block; re-emits every captured line that is not NOISE."""
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
            kept = [line for line in capture.read().decode(errors="replace").splitlines() if not NOISE.search(line)]
            if kept:
                print("\n".join(kept), file=sys.stderr)
