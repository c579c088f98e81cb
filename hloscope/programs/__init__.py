"""Programs hloscope profiles, built with abstract inputs only (never allocating).

`attention`: our ring attention's gradient; `paper-attention`: the paper codebase's structure.
A new program (a decoder layer, a training step) registers a `Program` in its own module.
"""

from hloscope.programs import attention, paper_attention  # noqa: F401  (registers the programs)
from hloscope.programs._registry import (
    PROGRAMS,
    AttentionShape,
    Program,
    get_program,
    lower_program,
    program_options,
    register,
)

__all__ = ["PROGRAMS", "AttentionShape", "Program", "get_program", "lower_program", "program_options", "register"]
