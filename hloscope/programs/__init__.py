"""Programs hloscope profiles, built with abstract inputs only (never allocating).

`attention`: our ring attention's gradient; `paper-attention`: the paper codebase's structure;
`layer` and `train-step`: reftrain's decoder layer and whole optimizer step for a preset.
A new program registers a `Program` in its own module.
"""

from hloscope.programs import attention, model_step, paper_attention  # noqa: F401  (registers the programs)
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
