"""reftrain.eval: evaluations of trained checkpoints. Today: Needle-in-a-Haystack (docs/niah.md).

    from reftrain.eval import run_niah
    result = run_niah(config, params, tokenizer, lengths=[256, 512], depths=[0, 50, 100], trials=4)
    result["accuracy"]          # [depth][length] fractions of trials that exact-matched the number

    python -m reftrain.eval niah --checkpoint runs/tiny/phase1 --lengths 256,512 --out niah
"""

# Names are loaded on first use (PEP 562): `python -m reftrain.eval --help` imports no jax, and a
# command imports jax once, quietly (reftrain.platform_choice.import_jax_quietly).
_WHERE = {
    "BOOKS": "reftrain.eval._haystack",
    "CITIES": "reftrain.eval._needle",
    "Cell": "reftrain.eval.niah",
    "DEFAULT_MAX_NEW_TOKENS": "reftrain.eval.niah",
    "Haystack": "reftrain.eval._haystack",
    "NEEDLE": "reftrain.eval._needle",
    "NIAHError": "reftrain.eval._haystack",
    "NeedleSample": "reftrain.eval._needle",
    "QUESTION": "reftrain.eval._needle",
    "accuracy_table": "reftrain.eval._report",
    "buffer_length": "reftrain.eval._decode",
    "build_cells": "reftrain.eval.niah",
    "build_sample": "reftrain.eval._needle",
    "draw_needles": "reftrain.eval._needle",
    "greedy_decode": "reftrain.eval._decode",
    "heatmap_figure": "reftrain.eval._report",
    "is_correct": "reftrain.eval._needle",
    "load_haystack": "reftrain.eval._haystack",
    "parse_number": "reftrain.eval._needle",
    "print_tables": "reftrain.eval._report",
    "run_niah": "reftrain.eval.niah",
    "score_cell": "reftrain.eval.niah",
    "split_sentences": "reftrain.eval._haystack",
    "write_outputs": "reftrain.eval._report",
}

__all__ = [
    "BOOKS", "CITIES", "Cell", "DEFAULT_MAX_NEW_TOKENS", "Haystack", "NEEDLE", "NIAHError", "NeedleSample",
    "QUESTION", "accuracy_table", "buffer_length", "build_cells", "build_sample", "draw_needles",
    "greedy_decode", "heatmap_figure", "is_correct", "load_haystack", "parse_number", "print_tables",
    "run_niah", "score_cell", "split_sentences", "write_outputs",
]


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'reftrain.eval' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value
