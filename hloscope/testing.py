"""Memory budgets as pytest assertions, for CI without an accelerator.

    def test_step_fits_an_a100():
        hloscope.testing.assert_fits("mymodel.steps:build", target="a100-80gb", devices=8,
                                     budget="70GiB", seq=32768)

GPU targets need the `gpu-aot` extra (deviceless XLA:GPU); nothing here needs a GPU.
"""

from __future__ import annotations

from typing import Any

from hloscope.api import BudgetExceeded, Profile, Program, check


def assert_fits(program: Program, *, target: str, devices: int, budget: int | float | str,
                mesh: dict[str, int] | None = None, timeout: float = 600, **options: Any) -> Profile:
    """Returns the Profile; fails the test with hloscope's report when the program does not fit."""
    __tracebackhide__ = True  # pytest shows the report, not this frame
    try:
        return check(program, target=target, devices=devices, budget=budget, mesh=mesh, timeout=timeout, **options)
    except BudgetExceeded as exceeded:
        raise AssertionError(str(exceeded)) from None
