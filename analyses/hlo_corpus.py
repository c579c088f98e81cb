"""Issue 17, item 7: hloscope's parser over 900+ HLO/StableHLO files written by other projects.

    nice -n 10 python analyses/hlo_corpus.py [--archive ../shared/data/hlo-corpus-public.tar.xz]

Extracts the archive (README beside it) into a temporary folder, parses and traces every file
and classifies it:

* ``parsed``: parse_module and trace_module both answered;
* ``not a module``: a refusal of a file that is legitimately not one whole module, with the
  reason (several ``// -----`` pieces, ``expected-error`` inputs invalid on purpose, HLO
  fragments without an ``HloModule`` header, MLIR with no ``func.func``, other dialects' IR);
* ``refused valid``: a ParseError on anything else (the bar: none);
* ``crash``: any other exception, an "internal parser error", or more than 20 s (the bar: none).

Writes analyses/results/hlo_corpus.md and .json. The project's tests do not need the archive.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import tarfile
import tempfile
import time
from collections import Counter

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from hloscope.hlo import ParseError, parse_module  # noqa: E402
from hloscope.trace import trace_module  # noqa: E402

_HERE = os.path.dirname(os.path.abspath(__file__))
_DEFAULT = os.path.join(_HERE, "..", "..", "shared", "data", "hlo-corpus-public.tar.xz")
_RESULTS = os.path.join(_HERE, "results")
_TIMEOUT_S = 20
_MLIR_FUNC = re.compile(r'func\.func\b|"func\.func"|\bfunc\s+@')
_OTHER_IR = re.compile(r"^\s*(?:%\S+\s*=\s*)?\"?(vhlo|tosa|linalg|tensor|arith|scf|memref|gpu|llvm|triton\w*|tt|xla_\w+|"
                       r"mhlo\.\w+_v\d|affine|bufferization|sparse_tensor|quant|tf|tfl)\.", re.M)


class _Timeout(Exception):
    pass


def _alarm(signum, frame):  # noqa: ARG001
    raise _Timeout()


def not_a_module(rel: str, text: str, message: str = "") -> str | None:
    """Why the file is legitimately not one whole module (refusing it is right), or None."""
    undefined = re.search(r"expected function @(\S+) to be defined", message)
    if undefined and not re.search(r"func\.func\s+(?:\w+\s+)?@" + re.escape(undefined.group(1)) + r"\b", text):
        return "calls a function the file does not define (MLIR's verifier refuses it too)"
    if rel.startswith("split_invalid/") or "expected-error" in text:
        return "invalid on purpose (expected-error)"
    if re.search(r"^// -----", text, re.M):
        return "several modules separated by // -----"
    stripped = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    is_hlo = rel.endswith((".hlo", ".txt")) or re.search(r"^\s*HloModule\b", stripped, re.M)
    if is_hlo and not re.search(r"^\s*HloModule\b", stripped, re.M):
        return "HLO fragment without an HloModule header"
    if not is_hlo and not _MLIR_FUNC.search(text):
        return "MLIR without a func.func"
    if not is_hlo:
        other = Counter(m.group(1) for m in _OTHER_IR.finditer(text))
        if other:
            return "other dialects' IR (" + ", ".join(sorted(other)) + ")"
    if len(re.findall(r"^\s*HloModule\b", stripped, re.M)) > 1:
        return "several HLO modules in one file"
    return None


def classify(rel: str, text: str) -> dict:
    start = time.perf_counter()
    signal.alarm(_TIMEOUT_S)
    try:
        module = parse_module(text)
        trace_module(module)
        status, detail = "parsed", None
    except ParseError as e:
        message = str(e)
        if "internal parser error" in message:
            status, detail = "crash", message
        else:
            reason = not_a_module(rel, text, message)
            status, detail = ("not a module", f"{reason}: {message}") if reason else ("refused valid", message)
    except _Timeout:
        status, detail = "crash", f"no answer within {_TIMEOUT_S} s"
    except RecursionError as e:
        status, detail = "crash", f"RecursionError: {e}"
    except Exception as e:  # noqa: BLE001 - a crash is what this run looks for
        status, detail = "crash", f"{type(e).__name__}: {e}"
    finally:
        signal.alarm(0)
    return {"file": rel, "status": status, "detail": detail[:300] if detail else None,
            "seconds": round(time.perf_counter() - start, 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", default=_DEFAULT)
    args = parser.parse_args()
    if not os.path.exists(args.archive):
        print(f"error: {args.archive}: no such file (see ../shared/data/README.md)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGALRM, _alarm)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(args.archive) as tar:
            tar.extractall(tmp, filter="data")
        for folder, _, names in sorted(os.walk(tmp)):
            for name in sorted(names):
                path = os.path.join(folder, name)
                rel = os.path.relpath(path, tmp)
                with open(path, encoding="utf-8", errors="replace") as f:
                    rows.append(classify(rel, f.read()))
    counts = Counter((r["file"].split("/")[0], r["status"]) for r in rows)
    statuses = ["parsed", "not a module", "refused valid", "crash"]
    folders = sorted({r["file"].split("/")[0] for r in rows})
    lines = ["# hloscope over the public HLO corpus", "",
             f"{len(rows)} files of `{os.path.basename(args.archive)}`; written by `analyses/hlo_corpus.py`.", "",
             "| folder | " + " | ".join(statuses) + " |", "| --- |" + " --- |" * len(statuses)]
    for folder in folders:
        lines.append(f"| {folder} | " + " | ".join(str(counts[(folder, s)]) for s in statuses) + " |")
    totals = Counter(r["status"] for r in rows)
    lines.append("| **all** | " + " | ".join(f"**{totals[s]}**" for s in statuses) + " |")
    lines += ["", "`split_invalid` pieces carry `expected-error` (invalid on purpose for the tools that wrote "
              "them: wrong types, bad attributes); hloscope checks structure and names, not each op's "
              "typing rules, so it reads most of them; a refusal there counts as 'not a module'."]
    reasons = Counter(r["detail"].split(":")[0] for r in rows if r["status"] == "not a module")
    lines += ["", "Why the refused files are not modules:", ""]
    lines += [f"* {reason}: {n}" for reason, n in reasons.most_common()]
    bad = [r for r in rows if r["status"] in ("refused valid", "crash")]
    lines += ["", f"Refused valid input or crashed ({len(bad)}):", ""]
    lines += [f"* `{r['file']}` ({r['status']}): {r['detail']}" for r in bad] or ["* none"]
    slowest = sorted(rows, key=lambda r: -r["seconds"])[:5]
    lines += ["", "Slowest files: " + ", ".join(f"`{r['file']}` {r['seconds']} s" for r in slowest)]
    os.makedirs(_RESULTS, exist_ok=True)
    with open(os.path.join(_RESULTS, "hlo_corpus.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(_RESULTS, "hlo_corpus.json"), "w") as f:
        json.dump({"totals": dict(totals), "files": rows}, f, indent=1)
    print("\n".join(lines))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
