"""Programs hloscope profiles, by name: its built-in ones, and anyone's `module:function`.

A program is a builder, `build(mesh, **options) -> (fn, args)`: `fn` is the function to compile
(or an already jitted one, which keeps its shardings and `donate_argnums`) and `args` its
arguments as `jax.ShapeDtypeStruct`s (with shardings on `mesh`) or arrays; a third element, a
JSON-able dict of what it built, goes into the profile (`source.built`). The built-in programs
are builders like any user's, registered here by a short name and imported only when named, so
`import hloscope` never loads reftrain, flax or optax:

- `attention`: our ring attention's gradient; `paper-attention`: the paper codebase's structure;
- `layer` and `train-step`: reftrain's decoder layer and whole optimizer step for a preset.

Nothing in this file imports jax or reftrain.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class BuiltinProgram:
    """A program shipped with hloscope.

    Attributes:
        builder: "module:function" of its `build(mesh, **options)`.
        description: one line for `--help`.
        options: "module:Class", the dataclass its options are fields of (the CLI's flags).
        mesh: "module:function" returning its default mesh `{axis: size}` for
            `(devices, **options)`, used when the caller names none.
    """

    builder: str
    description: str
    options: str
    mesh: str


_ATTENTION = "hloscope.programs.attention_shape:AttentionShape"
_MODEL = "hloscope.programs.model_step:ModelStepShape"
BUILTIN_PROGRAMS: dict[str, BuiltinProgram] = {
    "attention": BuiltinProgram(
        "hloscope.programs.attention:build",
        "gradient wrt q, k, v of reftrain's ring attention (custom VJP, GQA, segment ids rotating)",
        _ATTENTION, "hloscope.programs.attention_shape:sequence_mesh"),
    "paper-attention": BuiltinProgram(
        "hloscope.programs.paper_attention:build",
        "the MegaBeam paper codebase's ring attention (autodiff through checkpointed nested scans)",
        _ATTENTION, "hloscope.programs.attention_shape:sequence_mesh"),
    "train-step": BuiltinProgram(
        "hloscope.programs.model_step:build_train_step",
        "one complete reftrain optimizer step (forward, chunked loss, backward, AdamW) of a preset",
        _MODEL, "hloscope.programs.model_step:model_mesh"),
    "layer": BuiltinProgram(
        "hloscope.programs.model_step:build_layer",
        "one reftrain decoder layer, forward and backward",
        _MODEL, "hloscope.programs.model_step:model_mesh"),
}


def builder_spec(program: str) -> str:
    """Returns "module:function" (or "path/file.py:function") for a built-in name or a spec.

    Raises ValueError for a name that is neither built in nor of the form `module:function`.
    """
    if program in BUILTIN_PROGRAMS:
        return BUILTIN_PROGRAMS[program].builder
    module, sep, function = program.rpartition(":")
    if not sep or not module or not function.isidentifier():
        raise ValueError(
            f"unknown program {program!r}: expected one of {', '.join(sorted(BUILTIN_PROGRAMS))} "
            "or package.module:function (or path/to/file.py:function)"
        )
    return program


def import_object(spec: str) -> Any:
    """Imports "package.module:name" or "path/to/file.py:name" and returns the object."""
    import importlib
    import importlib.util
    import sys
    from pathlib import Path

    module_name, _, attribute = spec.rpartition(":")
    if module_name.endswith(".py"):
        path = Path(module_name).resolve()
        if not path.is_file():
            raise FileNotFoundError(f"no such file: {module_name}")
        name = f"_hloscope_program_{path.stem}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module  # dataclasses and pickling look their module up by name
        module_spec.loader.exec_module(module)
    else:
        module = importlib.import_module(module_name)
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise AttributeError(f"module {module_name!r} has no attribute {attribute!r}") from None


__all__ = ["BUILTIN_PROGRAMS", "BuiltinProgram", "builder_spec", "import_object"]
