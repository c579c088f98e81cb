"""Malformed input: real texts from jax, mutated, must give an HloModule or a ParseError, never
any other exception (IndexError, KeyError, RecursionError, ...)."""

from __future__ import annotations

from functools import lru_cache

import jax
import jax.numpy as jnp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax import lax

from hloscope.hlo import HloModule, ParseError, parse_module


def program(x):
    def step(carry, row):
        carry = lax.dynamic_update_slice(carry, row[None] * 2, (0, 0))
        return carry, jnp.sum(row)

    def outer(i, acc):
        acc, sums = lax.scan(step, acc, x)
        return acc + sums.sum() + i

    y = lax.fori_loop(0, 3, outer, jnp.zeros((4, 6)))
    return lax.cond(y.sum() > 0, lambda a: a * 2, lambda a: a, y), jnp.max(y, axis=1)


@lru_cache(maxsize=None)
def real_texts() -> tuple[str, ...]:
    lowered = jax.jit(program).lower(jnp.ones((5, 6)))
    return (
        lowered.compile().as_text(),
        lowered.as_text(dialect="hlo"),
        lowered.as_text(),
        lowered.as_text(debug_info=True),
        lowered.compiler_ir("stablehlo").operation.get_asm(print_generic_op_form=True, enable_debug_info=True),
    )


def check(text: str) -> HloModule | None:
    """Parses ``text``; a module must also answer every query without raising."""
    try:
        module = parse_module(text)
    except ParseError as e:
        assert "internal parser error" not in str(e), str(e)  # a check the parser itself missed
        assert e.lineno is None or e.lineno >= 1
        return None
    assert isinstance(module, HloModule)
    for name, comp in module.computations.items():
        comp.root()
        module.loop_nest(name)
        module.callers(name)
    for inst in module.instructions():
        inst.shape.nbytes()
        str(inst.shape)
        module.operands_of(inst)
        assert module.instruction(inst.computation, inst.name) is inst
    module.while_loops()
    return module


INSERTED = list("{}()[]<>%\"#,:=@^ \n²é\x00\t") + ["->", "loc(", "/*", "\\", "ROOT ", "tensor<", "<=", "9" * 30]


@st.composite
def mutated(draw) -> str:
    text = draw(st.sampled_from(real_texts()))
    for _ in range(draw(st.integers(1, 3))):
        if not text:
            break
        kind = draw(st.sampled_from(["delete", "duplicate", "insert", "truncate", "swap"]))
        lines = text.split("\n")
        if kind == "delete":
            i = draw(st.integers(0, len(text) - 1))
            text = text[:i] + text[i + draw(st.integers(1, 80)):]
        elif kind == "duplicate":
            line = lines[draw(st.integers(0, len(lines) - 1))]
            lines.insert(draw(st.integers(0, len(lines))), line)
            text = "\n".join(lines)
        elif kind == "insert":
            i = draw(st.integers(0, len(text)))
            text = text[:i] + draw(st.sampled_from(INSERTED)) + text[i:]
        elif kind == "truncate":
            text = text[:draw(st.integers(0, len(text) - 1))]
        else:
            i, j = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
            text = "\n".join(lines)
    return text


# Each example parses in milliseconds, so many more than the profile's default are cheap.
@settings(max_examples=max(400, settings.default.max_examples))
@given(mutated())
def test_mutated_text_parses_or_raises_parse_error(text):
    check(text)


def test_real_texts_parse():
    for text in real_texts():
        module = check(text)
        assert module is not None
        assert sorted(w.trip_count for w in module.while_loops()) == [3, 5]


@pytest.mark.parametrize("which", range(5))
def test_every_truncation_and_line_deletion(which):
    text = real_texts()[which]
    lines = text.rstrip("\n").split("\n")
    last = max(i for i, line in enumerate(lines) if line.strip())
    for k in range(last):
        # Cut after line k: the module (or the location aliases after it) is incomplete.
        with pytest.raises(ParseError) as err:
            parse_module("\n".join(lines[:k + 1]))
        assert "internal parser error" not in str(err.value)
    for k in range(len(lines)):
        check("\n".join(lines[:k] + lines[k + 1:]))


def test_deep_nesting_is_a_parse_error_not_a_recursion_error():
    deep = "(" * 5000 + "f32[]" + ")" * 5000
    chain = "\n".join(f"#loc{i} = loc(callsite(#loc{i + 1} at #loc{i + 1}))" for i in range(3000))
    for text in (
        f"HloModule m\nENTRY e {{\n  a = {deep} parameter(0)\n}}\n",
        "module @m {\n  func.func @main(%a: " + "tuple<" * 5000 + "f32" + ">" * 5000 + ") {\n    return\n  }\n}\n",
        chain + "\nmodule @m {\n  func.func @main() {\n    return loc(#loc0)\n  }\n}\n",
    ):
        with pytest.raises(ParseError) as err:
            parse_module(text)
        assert "internal parser error" not in str(err.value) and "nested" in str(err.value)
