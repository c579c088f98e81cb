"""The data spec: domains with weights and sources, tokenizer, packing, sequence-length mix, seed.

A spec is a TOML or JSON file (by suffix) or a dict of the same shape:

    seed = 0
    tokenizer = "builtin:mistral-7b-v0.1"      # or a path to any SentencePiece .model
    [packing]
    mode = "document"    # MegaBeam: document masks; "concat": UltraLong (no mask, eos separators)
    split = "long"       # "long": split only documents longer than a sequence; "any": fill every row
    shuffle = true       # document order reshuffled per epoch of each domain
    [[seq_mix]]          # optional; batches follow this mix when make_batches gets no seq_len
    seq_len = 81920
    sequences = 1200
    [[domains]]
    name = "code"
    weight = 0.70        # weights are normalised; shares are of real (non-padding) tokens
    sources = ["builtin:code", "my/repo_dump.jsonl", "more/code/"]
    text_field = "text"  # the JSONL field / Parquet column holding a document

Relative paths are taken from the spec file's folder.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from reftrain.data._cache import DataError, sha256_bytes

PACKING_MODES = ("document", "concat")
SPLIT_POLICIES = ("long", "any")


@dataclass(frozen=True)
class DomainSpec:
    """One domain of the mixture: its weight and where its documents come from."""

    name: str
    weight: float
    sources: tuple[str, ...]
    text_field: str = "text"


@dataclass(frozen=True)
class SeqStage:
    """`sequences` rows of `seq_len` tokens, one stage of a sequence-length mix."""

    seq_len: int
    sequences: int


@dataclass(frozen=True)
class PackingSpec:
    """How documents become rows. See docs/data.md for the exact per-token layout."""

    mode: str = "document"
    split: str = "long"
    shuffle: bool = True


@dataclass(frozen=True)
class DataSpec:
    """Everything the token stream depends on (with batch size and sequence length)."""

    domains: tuple[DomainSpec, ...]
    tokenizer: str | None = None
    packing: PackingSpec = field(default_factory=PackingSpec)
    seq_mix: tuple[SeqStage, ...] = ()
    seq_mix_order: str = "interleaved"
    seed: int = 0
    base_dir: str = "."

    @property
    def weights(self) -> tuple[float, ...]:
        """Returns the domain weights normalised to sum to 1."""
        total = sum(d.weight for d in self.domains)
        return tuple(d.weight / total for d in self.domains)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def fingerprint(self) -> str:
        """Returns a short hash of the spec (the iterator state refuses another spec's state)."""
        content = {k: v for k, v in self.to_dict().items() if k != "base_dir"}
        return sha256_bytes(json.dumps(content, sort_keys=True).encode())[:16]

    @staticmethod
    def from_dict(raw: dict[str, Any], base_dir: str | Path = ".") -> DataSpec:
        return spec_from_dict(raw, base_dir)

    @staticmethod
    def from_file(path: str | Path) -> DataSpec:
        return load_spec(path)


_TOP_KEYS = {"domains", "tokenizer", "packing", "seq_mix", "seq_mix_order", "seed", "base_dir"}


def _expect(cond: bool, message: str) -> None:
    if not cond:
        raise DataError(f"data spec: {message}")


def _positive_int(value: Any, what: str) -> int:
    _expect(isinstance(value, int) and not isinstance(value, bool) and value > 0,
            f"{what} must be a positive integer, got {value!r}")
    return value


def spec_from_dict(raw: dict[str, Any], base_dir: str | Path = ".") -> DataSpec:
    """Returns the validated DataSpec of `raw`; raises DataError naming the bad field."""
    _expect(isinstance(raw, dict), f"expected a table/object at the top, got {type(raw).__name__}")
    unknown = set(raw) - _TOP_KEYS
    _expect(not unknown, f"unknown key(s) {sorted(unknown)}; known: {sorted(_TOP_KEYS)}")
    domains_raw = raw.get("domains")
    _expect(isinstance(domains_raw, list) and domains_raw, "needs a non-empty list 'domains'")
    domains, names = [], set()
    for i, d in enumerate(domains_raw):
        _expect(isinstance(d, dict), f"domains[{i}] must be a table/object")
        extra = set(d) - {"name", "weight", "sources", "text_field"}
        _expect(not extra, f"domains[{i}] has unknown key(s) {sorted(extra)}")
        name = d.get("name")
        _expect(isinstance(name, str) and name and name not in names,
                f"domains[{i}].name must be a unique non-empty string, got {name!r}")
        names.add(name)
        weight = d.get("weight")
        _expect(isinstance(weight, (int, float)) and not isinstance(weight, bool) and weight > 0,
                f"domain {name!r}: weight must be a number > 0, got {weight!r}")
        sources = d.get("sources")
        if isinstance(sources, str):
            sources = [sources]
        _expect(isinstance(sources, list) and sources and all(isinstance(s, str) for s in sources),
                f"domain {name!r}: sources must be a non-empty list of paths or builtin:NAME")
        text_field = d.get("text_field", "text")
        _expect(isinstance(text_field, str) and text_field, f"domain {name!r}: text_field must be a string")
        domains.append(DomainSpec(name, float(weight), tuple(sources), text_field))

    packing_raw = raw.get("packing", {})
    _expect(isinstance(packing_raw, dict), "packing must be a table/object")
    extra = set(packing_raw) - {"mode", "split", "shuffle"}
    _expect(not extra, f"packing has unknown key(s) {sorted(extra)}")
    mode = packing_raw.get("mode", "document")
    _expect(mode in PACKING_MODES, f"packing.mode must be one of {PACKING_MODES}, got {mode!r}")
    split = packing_raw.get("split", "long" if mode == "document" else "any")
    _expect(split in SPLIT_POLICIES, f"packing.split must be one of {SPLIT_POLICIES}, got {split!r}")
    shuffle = packing_raw.get("shuffle", True)
    _expect(isinstance(shuffle, bool), f"packing.shuffle must be true or false, got {shuffle!r}")

    stages = []
    for i, s in enumerate(raw.get("seq_mix", [])):
        _expect(isinstance(s, dict) and set(s) == {"seq_len", "sequences"},
                f"seq_mix[{i}] must have exactly the keys seq_len and sequences")
        stages.append(SeqStage(_positive_int(s["seq_len"], f"seq_mix[{i}].seq_len"),
                               _positive_int(s["sequences"], f"seq_mix[{i}].sequences")))
    order = raw.get("seq_mix_order", "interleaved")
    _expect(order in ("interleaved", "sequential"),
            f"seq_mix_order must be 'interleaved' or 'sequential', got {order!r}")
    seed = raw.get("seed", 0)
    _expect(isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0,
            f"seed must be an integer >= 0, got {seed!r}")
    tokenizer = raw.get("tokenizer")
    _expect(tokenizer is None or isinstance(tokenizer, str), "tokenizer must be a path string")
    base = Path(raw.get("base_dir", base_dir))
    if tokenizer is not None and not tokenizer.startswith("builtin:"):
        tokenizer = str(Path(tokenizer) if Path(tokenizer).is_absolute() else base / tokenizer)
    return DataSpec(tuple(domains), tokenizer, PackingSpec(mode, split, shuffle), tuple(stages),
                    order, seed, str(base))


def load_spec(path: str | Path) -> DataSpec:
    """Returns the DataSpec in a `.toml` or `.json` file; raises DataError if unreadable or invalid."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data spec {str(path)!r} is not a file")
    try:
        if path.suffix == ".toml":
            raw = tomllib.loads(path.read_text())
        elif path.suffix == ".json":
            raw = json.loads(path.read_text())
        else:
            raise DataError(f"data spec {str(path)!r}: use a .toml or .json file")
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"data spec {str(path)!r} does not parse: {err}") from None
    return spec_from_dict(raw, base_dir=path.parent.resolve())


DEFAULT_SPEC = DataSpec(
    domains=(
        DomainSpec("code", 0.70, ("builtin:code",)),
        DomainSpec("papers", 0.10, ("builtin:papers",)),
        DomainSpec("web", 0.15, ("builtin:web",)),
        DomainSpec("books", 0.05, ("builtin:books",)),
    ),
    # MegaBeam phase 3 (section 3): 1,200 x 80K + 300 x 256K + 30 x 512K tokens.
    seq_mix=(SeqStage(81920, 1200), SeqStage(262144, 300), SeqStage(524288, 30)),
)
