"""reftrain.eval: evaluations of trained checkpoints. Today: Needle-in-a-Haystack (docs/niah.md).

    from reftrain.eval import run_niah
    result = run_niah(config, params, tokenizer, lengths=[256, 512], depths=[0, 50, 100], trials=4)
    result["accuracy"]          # [depth][length] fractions of trials that exact-matched the number

    python -m reftrain.eval niah --checkpoint runs/tiny/phase1 --lengths 256,512 --out niah
"""

from reftrain.eval._decode import buffer_length, greedy_decode
from reftrain.eval._haystack import BOOKS, Haystack, NIAHError, load_haystack, split_sentences
from reftrain.eval._needle import (
    CITIES,
    NEEDLE,
    QUESTION,
    NeedleSample,
    build_sample,
    draw_needles,
    is_correct,
    parse_number,
)
from reftrain.eval._report import accuracy_table, heatmap_figure, print_tables, write_outputs
from reftrain.eval.niah import DEFAULT_MAX_NEW_TOKENS, Cell, build_cells, run_niah, score_cell

__all__ = [
    "BOOKS", "CITIES", "Cell", "DEFAULT_MAX_NEW_TOKENS", "Haystack", "NEEDLE", "NIAHError", "NeedleSample",
    "QUESTION", "accuracy_table", "buffer_length", "build_cells", "build_sample", "draw_needles",
    "greedy_decode", "heatmap_figure", "is_correct", "load_haystack", "parse_number", "print_tables",
    "run_niah", "score_cell", "split_sentences", "write_outputs",
]
