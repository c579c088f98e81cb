"""Issue 19, item 4: fit hloscope's speed model to measured steps and check it on held-out ones.

    python analyses/fit_speed_model.py [--fit A.json ...] [--check B.json ...] [--write-fit]

Each row of an `analyses/bench_train.py` JSON is one measured step (median of its timed steps)
on one GPU: length, layers, remat policy, documents (the bench's packed row) and document
block. `hloscope.programs.train_step_speed.step_work` counts the work of each (matmul and attention FLOPs as
executed, recompute included, cuDNN calls and their padded slots); non-negative least squares
over the `--fit` rows gives the model's five coefficients, and every `--check` row, none of which the fit saw,
is predicted and compared. `--write-fit` stores the coefficients in `hloscope/programs/speed_fit.json`,
which `hloscope search` uses. Writes <out-dir>/speed_model.json and .md (the table).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from scipy.optimize import nnls

from _common import RESULTS, parse_args, write_json  # noqa: E402  (this folder is first on sys.path)
from bench_train import _case_inputs, _config  # noqa: E402

from hloscope.programs.train_step_speed import FIT_PATH, SpeedFit, step_work  # noqa: E402
from reftrain.files import atomic_write_bytes  # noqa: E402

# Steps with many documents (bench_speed_docs_*: 16 to 512 documents, blocks of 16K and whole
# shards) were split into fit (f) and held-out (h) rows before they were measured.
FIT_ROWS = ["bench_remat_32k.json", "bench_remat_32k_docs.json", "bench_remat_64k.json", "bench_remat_64k_full.json"] + [
    f"bench_speed_docs_{part}.json" for part in ("f1", "f2", "f4", "f7")]
CHECK_ROWS = [f"bench_speed_heldout_{part}.json" for part in "abcdef"] + ["bench_docs_one_call.json"] + [
    f"bench_speed_docs_{part}.json" for part in ("h3", "h5", "h6", "h8")]
WITHIN = 0.10


def _configure(parser) -> None:
    parser.add_argument("--rows-dir", type=Path, default=RESULTS, help="where the bench_train JSONs are")
    parser.add_argument("--fit", nargs="+", default=FIT_ROWS, help="bench_train JSONs (in --rows-dir) to fit on")
    parser.add_argument("--check", nargs="*", default=CHECK_ROWS, help="bench_train JSONs to check, never fitted")
    parser.add_argument("--write-fit", action="store_true", help=f"store the coefficients in {FIT_PATH}")


def _measured(folder: Path, names: list[str]) -> list[dict]:
    rows = []
    for name in names:
        for row in json.loads((folder / name).read_text())["rows"]:
            if not row.get("anchor") and row.get("step_s"):  # reftrain's steps that ran
                rows.append({**row, "file": name})
    return rows


def _work(row: dict):
    config = _config(row)
    _, documents = _case_inputs(row, config.vocab_size)
    work = step_work(config, row["length"], {"dp": 1, "fsdp": 1, "tp": 1, "sp": 1}, row["device"], "cuda", documents)
    return config, work


def fit(rows: list[dict], source: str) -> SpeedFit:
    works = [_work(row)[1] for row in rows]
    features = np.array([[w.matmul_flops / w.peak_flops, w.attention_flops / w.peak_flops, w.attention_calls,
                          w.padded_elements, 1.0] for w in works])
    coefficients, _ = nnls(features, np.array([row["step_s"] for row in rows]))
    inverse_mm, inverse_attention, per_call, per_padded, fixed = (float(c) for c in coefficients)
    return SpeedFit(matmul_efficiency=1 / inverse_mm, attention_efficiency=1 / inverse_attention,
                    seconds_per_call=per_call, seconds_per_padded_element=per_padded, fixed_seconds=fixed, source=source)


def _table(rows: list[dict]) -> str:
    lines = ["| set | tokens | layers | remat | documents | document block | measured s | predicted s | error |",
             "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['set']} | {r['length']:,} | {r['layers']} | {r['remat']} | {r['documents_in_row'] or '-'} | "
                     f"{r['document_block_used'] if r['documents_in_row'] else '-'} | {r['step_s']:.3f} | "
                     f"{r['predicted_s']:.3f} | {r['error']:+.1%} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(__doc__, _configure, argv)
    fit_rows, check_rows = _measured(args.rows_dir, args.fit), _measured(args.rows_dir, args.check)
    devices = sorted({row["device"] for row in fit_rows + check_rows})
    versions = sorted({row.get("jax", "?") for row in fit_rows + check_rows})
    source = (f"{len(fit_rows)} steps of analyses/results/{', '.join(args.fit)} on {', '.join(devices)}, "
              f"jax {', '.join(versions)} (analyses/fit_speed_model.py)")
    coefficients = fit(fit_rows, source)
    table = []
    for label, rows in (("fit", fit_rows), ("held out", check_rows)):
        for row in rows:
            config, work = _work(row)
            predicted = work.seconds(coefficients)
            _, documents = _case_inputs(row, config.vocab_size)
            table.append({"set": label, "file": row["file"], "length": row["length"], "layers": row["layers"],
                          "remat": row["remat"], "documents_in_row": len(documents or []),
                          "document_block_used": config.document_block, "step_s": row["step_s"],
                          "predicted_s": predicted, "error": predicted / row["step_s"] - 1})
    held = [r for r in table if r["set"] == "held out"]
    within = sum(abs(r["error"]) <= WITHIN for r in held)
    summary = (f"held out: {within} of {len(held)} within {WITHIN:.0%}" +
               (f" (largest error {max(abs(r['error']) for r in held):.1%})" if held else ""))
    result = {"fit": coefficients.__dict__, "rows": table, "summary": summary}
    write_json(args.out_dir / "speed_model.json", result)
    header = (f"hloscope's speed model (hloscope/programs/train_step_speed.py) fitted by `python analyses/fit_speed_model.py` on "
              f"{source}: matmul efficiency {coefficients.matmul_efficiency:.3f}, attention efficiency "
              f"{coefficients.attention_efficiency:.3f}, {coefficients.seconds_per_call * 1e3:.2f} ms a cuDNN call, "
              f"{coefficients.seconds_per_padded_element * 1e12:.3f} ps a padded element, "
              f"{coefficients.fixed_seconds:.3f} s a step. Held-out rows: {', '.join(args.check)}; "
              f"error = predicted / measured - 1.\n\n")
    atomic_write_bytes(args.out_dir / "speed_model.md", (header + _table(table) + "\n\n" + summary + "\n").encode())
    print(json.dumps(coefficients.__dict__, indent=1))
    print(_table(table))
    print(summary)
    if args.write_fit:
        write_json(FIT_PATH, coefficients.__dict__, indent=1)
        print(f"wrote {FIT_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
