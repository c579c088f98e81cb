"""layout_total from the text of a compile made on this machine's own accelerator, against that
compile's memory_analysis(): the case issue 33 is about, a user holding only `compiled.as_text()`
from the machine where the job ran, with whatever jax that machine has.

    PYTHONPATH=. python3 analyses/layout_on_card.py [--only NAME] [--sets ...] [--out-dir DIR]

For every single-device program of analyses/hlo_real_programs.py's sets (fitted, development,
held out; the multi-device ones need more devices than one card), builds it on jax's first
device, compiles it in this process as the user's job would, writes the optimized HLO text, reads
that text back with hloscope's text model (`hloscope profile --hlo`, which never sees the
compile) and prints layout_total / xla_total per program and the band per set. On a CPU host it
runs on XLA:CPU; on the GPU machine it is a real card's compile with that machine's jax.
Writes DIR/layout_on_card_<device>.{md,json}.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(_HERE, ".."))
sys.path.insert(0, _HERE)

from hlo_real_programs import SETS, _sets, band_by_set, band_table, sets_option  # noqa: E402


def text_row(group: str, name: str, program: str, mesh: dict | None, options: dict, device, work: Path) -> dict:
    """One program compiled on `device`, its text written to `work` and profiled from the text alone."""
    from hloscope._lower import lower
    from hloscope._worker import _memory
    from hloscope.profiling import profile_text

    row = {"set": group, "program": name}
    started = time.perf_counter()
    try:
        compiled = lower([device], program, options, mesh).compile()
        memory = _memory(compiled.memory_analysis())
        path = work / (re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_") + ".txt")
        path.write_text(compiled.as_text())
        figures = profile_text(path)["figures"]
    except Exception as error:  # noqa: BLE001 - a failed program is a row, not the end of the table
        return {**row, "error": f"{type(error).__name__}: {error}"[:300]}
    return {**row, "xla_total": memory["xla_total"], "layout_total": figures["layout_total"],
            "layout_ratio": figures["layout_total"] / memory["xla_total"], "live_peak": figures["live_peak"],
            "peak_memory_in_bytes": memory.get("peak_memory_in_bytes"), "seconds": round(time.perf_counter() - started, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=None, help="run only programs whose name contains this")
    parser.add_argument("--sets", type=sets_option, default=list(SETS), help=f"comma-separated, of {', '.join(SETS)}")
    parser.add_argument("--out-dir", default=os.path.join(_HERE, "results"))
    args = parser.parse_args()
    import jax

    from hloscope._files import atomic_write_text, write_json

    device = jax.devices()[0]
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for group, programs in _sets().items():
            if group not in args.sets:
                continue
            for name, (program, devices, mesh, options) in programs.items():
                if devices != 1 or (args.only and args.only not in name):
                    continue
                rows.append(text_row(group, name, program, mesh, options, device, Path(work)))
                r = rows[-1]
                print(f"{name}: {r.get('error') or format(r['layout_ratio'], '.4f')}", file=sys.stderr)
    lines = ["| set | program | xla_total | layout_total | layout_total / xla_total | within 3% |",
             "| --- | --- | ---: | ---: | ---: | --- |"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['set']} | {r['program']} | - | - | failed: {r['error'][:80]} | - |")
        else:
            lines.append(f"| {r['set']} | {r['program']} | {r['xla_total']:,} | {r['layout_total']:,} | "
                         f"{r['layout_ratio']:.4f} | {'yes' if abs(r['layout_ratio'] - 1) <= 0.03 else 'no'} |")
    summary = band_by_set(rows)
    table = "\n".join(lines) + "\n\n" + band_table(summary)
    print(table)
    kind = device.device_kind
    out = os.path.join(args.out_dir, "layout_on_card_" + re.sub(r"[^A-Za-z0-9]+", "_", kind).strip("_").lower())
    os.makedirs(args.out_dir, exist_ok=True)
    write_json(out + ".json", {"jax": jax.__version__, "device_kind": kind, "bands": summary, "rows": rows})
    atomic_write_text(out + ".md", (
        f"layout_total (hloscope's text model, from `compiled.as_text()` alone) against XLA's total "
        f"(argument + output + temp - alias) of the same compile, made in-process on {kind} with jax "
        f"{jax.__version__}; the single-device programs of analyses/hlo_real_programs.py's sets. "
        f"`python3 analyses/layout_on_card.py`\n\n" + table + "\n"))
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
