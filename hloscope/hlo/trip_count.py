"""Trip counts of while loops: XLA's ``known_trip_count``, else a small symbolic evaluation.

The evaluation follows values through the few instructions a counted loop is built from
(constants, get-tuple-element/tuple, copy/convert/bitcast/reshape, compare, add) and into
fusion/call computations (XLA wraps the compare and the increment into tiny fusions), mapping
their parameters back to the caller's operands. Anything else gives "unknown", so a loop whose
count is not certain gets None, never a guess.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Union

from hloscope.hlo.model import CALL_OPCODES
from hloscope.hlo.scan import unquote
from hloscope.hlo.shapes import parse_int_literal

if TYPE_CHECKING:
    from hloscope.hlo.model import HloModule, Instruction

# Deep enough for fusion-wrapped compares inside calls; bounded so bad input cannot recurse far.
_MAX_DEPTH = 48
_PASS_THROUGH = {"copy", "convert", "bitcast", "reshape"}
_CALLS = CALL_OPCODES | {"fusion"}
_MIRROR = {"LT": "GT", "GT": "LT", "LE": "GE", "GE": "LE", "EQ": "EQ", "NE": "NE"}
_KNOWN = re.compile(r'"known_trip_count"\s*:\s*\{\s*"n"\s*:\s*"?(\d+)"?')

# A value: ("const", int) | ("param", computation, number, path) | ("cmp", dir, v, v)
# | ("add", v, v) | None for unknown. ``path`` indexes into tuples / multiple results.
Value = Union[tuple, None]
# Lazily evaluated operand of a called computation: (computation, name, env, path prefix).
_Ref = tuple[str, str, "Env", tuple[int, ...]]
Env = Union[tuple[str, list[_Ref]], None]


def known_trip_count(backend_config: str | None) -> int | None:
    """``known_trip_count.n`` from a while's backend_config (JSON, maybe as a quoted string)."""
    if not backend_config:
        return None
    text = backend_config.strip()
    if text.startswith('"') and text.endswith('"') and len(text) >= 2:
        text = unquote(text)
    m = _KNOWN.search(text)
    return int(m.group(1)) if m else None


def infer_trip_count(module: "HloModule", loop: "Instruction", body: str, condition: str) -> int | None:
    """Trip count of a counted loop ``for (i = a; i < b; i += s)``, or None when not sure.

    The condition's root must compare one loop-carried element against a constant (LT or LE,
    either operand order), the while's init value of that element must be a constant, and the
    body must produce that element as itself plus a positive constant.
    """
    cond_comp = module.computations.get(condition)
    body_comp = module.computations.get(body)
    if cond_comp is None or body_comp is None or not cond_comp.instructions or not body_comp.instructions:
        return None
    test = _value(module, condition, cond_comp.root().name, None, (), 0)
    if test is None or test[0] != "cmp":
        return None
    _, direction, lhs, rhs = test
    if _is_const(lhs) and _is_param(rhs, condition):
        lhs, rhs, direction = rhs, lhs, _MIRROR.get(direction or "", "")
    if not (_is_param(lhs, condition) and _is_const(rhs)) or direction not in ("LT", "LE", "NE"):
        return None
    number, path = lhs[2], lhs[3]

    # Init: the while's operand for that parameter (HLO: one tuple operand, MLIR: one per value).
    keys = module._operand_keys.get((loop.computation, loop.name), [])
    if number >= len(keys):
        return None
    init = _operand_value(module, loop, keys, number, None, path, 0)

    # Step: what the body hands to the next iteration for that element.
    root = body_comp.root()
    if root.opcode == "return":
        root_keys = module._operand_keys.get((body, root.name), [])
        if number >= len(root_keys):
            return None
        step = _operand_value(module, root, root_keys, number, None, path, 0)
    else:
        step = _value(module, body, root.name, None, path, 0)
    counter = ("param", body, number, path)
    if step is None or step[0] != "add":
        return None
    increments = [b for a, b in ((step[1], step[2]), (step[2], step[1])) if a == counter and _is_const(b)]
    if not increments or not _is_const(init):
        return None
    start, bound, stride = init[1], rhs[1], increments[0][1]
    if stride <= 0:
        return None
    if direction == "LT":
        return max(0, -((start - bound) // stride))
    if direction == "LE":
        return max(0, (bound - start) // stride + 1)
    # NE: counts only when the counter lands exactly on the bound.
    return (bound - start) // stride if bound >= start and (bound - start) % stride == 0 else None


def _is_const(v: Value) -> bool:
    return v is not None and v[0] == "const"


def _is_param(v: Value, computation: str) -> bool:
    return v is not None and v[0] == "param" and v[1] == computation


def _operand_value(module: "HloModule", inst: "Instruction", keys: list, i: int, env: Env,
                   path: tuple[int, ...], depth: int) -> Value:
    """Value of operand ``i`` of ``inst`` (keys are its operand node keys) projected by ``path``."""
    if i >= len(keys):
        return None
    result = inst.operand_results[i] if i < len(inst.operand_results) else None
    prefix = (result,) if result is not None else ()
    comp, name = keys[i]
    return _value(module, comp, name, env, prefix + path, depth + 1)


def _value(module: "HloModule", comp: str, name: str, env: Env, path: tuple[int, ...], depth: int) -> Value:
    if depth > _MAX_DEPTH:
        return None
    inst = module._index.get((comp, name))
    if inst is None:
        return None
    op = inst.opcode
    keys = module._operand_keys.get((comp, name), [])

    def operand(i: int, sub: tuple[int, ...] = ()) -> Value:
        return _operand_value(module, inst, keys, i, env, sub, depth)

    if op == "parameter":
        return _parameter(module, inst, env, path, depth)
    if op in _PASS_THROUGH:
        return operand(0, path)
    if op == "get-tuple-element":
        index = parse_int_literal(inst.attributes.get("index", ""))
        return None if index is None else operand(0, (index,) + path)
    if op == "tuple":
        return operand(path[0], path[1:]) if path else None
    if op == "return":
        if len(keys) == 1:
            return operand(0, path)
        return operand(path[0], path[1:]) if path else None
    if op == "constant":
        if path:
            return None
        number = parse_int_literal(inst.attributes.get("literal", ""))
        return None if number is None else ("const", number)
    if op == "compare" and not path:
        return ("cmp", inst.attributes.get("direction"), operand(0), operand(1))
    if op == "add" and not path:
        return ("add", operand(0), operand(1))
    if op in _CALLS and len(inst.called_computations) == 1:
        callee = module.computations.get(inst.called_computations[0])
        if callee is None or not callee.instructions:
            return None
        refs: list[_Ref] = []
        for i, (k_comp, k_name) in enumerate(keys):
            result = inst.operand_results[i] if i < len(inst.operand_results) else None
            refs.append((k_comp, k_name, env, (result,) if result is not None else ()))
        return _value(module, callee.name, callee.root().name, (callee.name, refs), path, depth + 1)
    return None


def _parameter(module: "HloModule", inst: "Instruction", env: Env, path: tuple[int, ...], depth: int) -> Value:
    number = parse_int_literal(inst.attributes.get("parameter_number", ""))
    if number is None:
        return None
    if env is not None and env[0] == inst.computation:
        if not 0 <= number < len(env[1]):
            return None
        comp, name, outer_env, prefix = env[1][number]
        return _value(module, comp, name, outer_env, prefix + path, depth + 1)
    # A computation called from exactly one call/fusion: its parameter is that operand (this is
    # how XLA outlines an inner loop with its constant init into a call of its own).
    callers = module._callers.get(inst.computation, [])
    if len(callers) == 1 and callers[0].opcode in _CALLS:
        caller = callers[0]
        keys = module._operand_keys.get((caller.computation, caller.name), [])
        return _operand_value(module, caller, keys, number, None, path, depth)
    return ("param", inst.computation, number, path)
