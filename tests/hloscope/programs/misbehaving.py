"""Builders that go wrong in each way a user's can: hloscope must answer each with one line."""

import os
import signal
import time


def raises(mesh, **options):
    raise ValueError("seq must be a multiple of 128, got 100")


def segfaults(mesh, **options):
    os.kill(os.getpid(), signal.SIGSEGV)


def hangs(mesh, **options):
    time.sleep(3600)


def runs_out_of_memory(mesh, **options):
    raise MemoryError("cannot allocate 1 TiB")


def returns_nothing_useful(mesh, **options):
    return 42
