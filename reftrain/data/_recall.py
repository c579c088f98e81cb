"""Dense in-context retrieval for a base stage: rows packed with documents full of key-value facts
and questions about them, the loss on every answer (issue 30).

A model trained from scratch on the corpora with one retrieval question per 2,048-token row
never learned to read its context (issue 20's and 30's base-stage runs: NIAH 0.00): the corpora
are memorised within a few epochs, and reciting them was cheaper than reading. A recall
document asks for the skill many times over and cannot be recited:

    [bos] filler .. FACT .. filler .. FACT .. FACT .. filler ..
    QUERY Answer: PREFIX VALUE.   QUERY Answer: PREFIX VALUE.   ..   [eos]

- The filler is pieces of 8-48 tokens cut from random places of the run's own corpora, so that
  after any point the text cannot be recited beyond a few tokens.
- A FACT binds a made-up key to a random value ("The access code of Pexhul is 4109521.") in one
  of several templates; the document's other facts in the same template are the look-alikes
  retrieval must skip (RULER's multi-key setting). Keys are never the eval's needles' cities,
  and no template is the eval's ("The special magic ... number is"), so NIAH measures the skill
  in words the model has not been trained on.
- A QUERY asks for one key (its answer restates the fact's beginning, PREFIX, and the loss
  falls on VALUE and the closing period), for every value of a key that has several (RULER's
  multi-value), or for several keys at once (multi-query).
- Many documents hold a span of random tokens twice, the second copy at the end with the loss
  on it after its first 2 tokens: plain copying, the induction that retrieval is built on. At
  difficulty 0 every document with room for one (24 tokens after its questions) has one, at
  0.375 and above a quarter. Random, because the first
  design repeated corpus text, which a model that has memorised the corpora predicts without
  copying (issue 30's H100 run: after 1,563 steps it answered 0.4% of the stream's questions);
  drawn from the corpora's most frequent tokens, few at first (`Filler.span`).

Curriculum: `difficulty` in [0, 1] grows with the row index over `warmup_rows`. At 0 the
documents are short (a sixteenth of a row, at least 64 tokens) with few facts (one below 200
tokens); at 1 they reach the whole row,
and a fifth of the rows are a single document of the row's length (the length a NIAH probe at
the stage's length asks about). Row i is a pure function of (seed, i): the stream's resume state
is its row count.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from reftrain.data._cache import DataError, check_host_split, check_same_iterator
from reftrain.data._corpus import Corpus
from reftrain.data._tokenizer import Tokenizer

RECALL_STATE_FORMAT = "reftrain.data/recall-v1"
MAX_DOCUMENTS = 16  # per row: the small preset's cuDNN packed path has 16 document slots

_SYLLABLES = ("ka", "lo", "mi", "ra", "ten", "vo", "zu", "bel", "dor", "fi", "gan", "hul", "jo", "nir", "pex",
              "sal", "tor", "ux", "wen", "yas", "qi", "mar", "osk", "ply", "dra", "ven", "cu", "ith")
_COLOURS = ("red", "blue", "green", "amber", "violet", "grey", "golden", "silver", "black", "white", "crimson",
            "teal", "ochre", "pale", "dark")
_THINGS = ("heron", "lantern", "river", "falcon", "orchard", "engine", "harbour", "compass", "meadow", "tower",
           "violin", "glacier", "beetle", "canyon", "ledger", "anchor", "pepper", "marble", "thistle", "cabinet")
_NOUNS = ("code", "number", "key", "token", "value", "pin", "id", "password", "serial", "label")
_WORDS = ("apple", "birch", "cobalt", "delta", "ember", "fjord", "granite", "hazel", "indigo", "juniper", "kelp",
          "lotus", "maple", "nectar", "onyx", "quartz", "russet", "saffron", "tundra", "umber", "willow", "zephyr")

# (fact, question, answer prefix); {k} key, {n} noun, {v} value. Each piece is encoded on its own, as
# the eval's needle is, so a value after its prefix starts with a lone "▁" as it does there.
TEMPLATES = (
    ("The access {n} of {k} is {v}.", "What is the access {n} of {k}?", "The access {n} of {k} is"),
    ("{k}'s locker {n} is {v}.", "What is {k}'s locker {n}?", "{k}'s locker {n} is"),
    ("The secret {n} for {k} is: {v}.", "What is the secret {n} for {k}?", "The secret {n} for {k} is:"),
    ("Remember that the {n} of {k} is {v}.", "What is the {n} of {k}?", "The {n} of {k} is"),
    ("Note: {k} has the {n} {v}.", "Which {n} does {k} have?", "{k} has the {n}"),
    ("{k} -> {v}", "Look up {k}.", "{k} ->"),
    ("The hidden {n} stored under {k} reads {v}.", "What does the hidden {n} stored under {k} read?",
     "The hidden {n} stored under {k} reads"),
    ("[{k}] {n} = {v}", "What is the {n} of [{k}]?", "[{k}] {n} ="),
)


def _key(rng: np.random.Generator) -> str:
    kind = rng.integers(3)
    if kind == 0:
        return "".join(rng.choice(_SYLLABLES, size=int(rng.integers(2, 4)))).capitalize()
    if kind == 1:
        return f"the {rng.choice(_COLOURS)} {rng.choice(_THINGS)}"
    return f"{rng.choice(_THINGS)}-{int(rng.integers(10, 1000))}"


def _value(rng: np.random.Generator) -> str:
    kind = rng.random()
    if kind < 0.7:  # digits, as the eval's needles (Mistral's tokenizer splits them one per token)
        return str(int(rng.integers(10 ** int(rng.integers(3, 8)), 10 ** 9)))
    if kind < 0.85:
        return "".join(rng.choice(list("0123456789abcdef"), size=int(rng.integers(4, 9))))
    return f"{rng.choice(_WORDS)}-{rng.choice(_WORDS)}"


def _join(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + f" and {names[-1]}"


@dataclass
class _Parts:
    """A document in the making: token pieces with per-piece loss flags."""

    ids: list[np.ndarray]
    loss: list[np.ndarray]

    def add(self, ids: np.ndarray, loss_from: int | None = None) -> None:
        """Appends `ids`; targets of ids[loss_from:] carry loss (None: none of them)."""
        mask = np.zeros(len(ids), np.float32)
        if loss_from is not None:
            mask[loss_from:] = 1.0
        self.ids.append(np.asarray(ids, np.int32))
        self.loss.append(mask)

    def __len__(self) -> int:
        return sum(len(i) for i in self.ids)


class Filler:
    """Token pieces from random places of the corpora (bos and eos removed)."""

    def __init__(self, corpora: Sequence[Corpus], tokenizer: Tokenizer):
        pools = []
        for corpus in corpora:
            tokens = np.asarray(corpus.tokens)
            pools.append(tokens[~np.isin(tokens, (tokenizer.bos_id, tokenizer.eos_id))])
        self.tokens = np.concatenate(pools).astype(np.int32)
        if len(self.tokens) < 64:
            raise DataError("the corpora hold too few tokens for recall filler")
        counts = np.bincount(self.tokens, minlength=tokenizer.vocab_size)
        # The corpora's tokens, most frequent first (copied spans are drawn from the head of it).
        self.by_frequency = np.argsort(-counts, kind="stable")[: int((counts > 0).sum())].astype(np.int32)

    def span(self, size: int, difficulty: float, rng: np.random.Generator) -> np.ndarray:
        """Returns `size` random tokens of the corpora's most frequent 128 (difficulty 0) to 4,096
        (difficulty 1): copying is learned first where the embeddings train fast (a 2-layer model
        here learns to repeat a random 31-token span in 100 steps over 100 token ids, 300 over
        1,000, and not in 300 over all 32,000)."""
        alphabet = min(len(self.by_frequency), int(128 * 32 ** difficulty))
        return self.by_frequency[rng.integers(0, alphabet, size=size)]

    def take(self, n: int, rng: np.random.Generator) -> np.ndarray:
        out, used = [], 0
        while used < n:
            size = min(n - used, int(rng.integers(8, 49)))
            start = int(rng.integers(len(self.tokens) - size))
            out.append(self.tokens[start : start + size])
            used += size
        return np.concatenate(out) if out else np.zeros(0, np.int32)


def recall_document(tokenizer: Tokenizer, filler: Filler, length: int, rng: np.random.Generator,
                    difficulty: float) -> tuple[np.ndarray, np.ndarray]:
    """Returns (tokens int32 `[length]`, loss_mask float32 `[length]`) of one document; loss_mask[t]
    is 1 when tokens[t + 1] is an answer token. Raises DataError when `length` < 64."""
    if length < 64:
        raise DataError(f"a recall document needs at least 64 tokens, got {length}")
    enc = tokenizer.encode
    fact_t, question_t, prefix_t = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
    noun = str(rng.choice(_NOUNS))
    room = length - 2  # bos and eos
    most = max(1, min(24, int(room * (0.3 + 0.4 * difficulty)) // 40))  # a fact and its query: about 40 tokens
    n_keys = int(rng.integers(1, most + 1))
    keys = list(dict.fromkeys(_key(rng) for _ in range(n_keys)))
    facts: list[tuple[str, str]] = []  # (key, value)
    multi_value = len(keys) > 1 and rng.random() < 0.15
    for i, key in enumerate(keys):
        for _ in range(int(rng.integers(2, 4)) if multi_value and i == 0 else 1):
            facts.append((key, _value(rng)))
    order = rng.permutation(len(facts))
    fact_ids = [enc(fact_t.format(k=facts[i][0], n=noun, v=facts[i][1])) for i in order]

    queries: list[tuple[np.ndarray, np.ndarray]] = []  # (prompt ids, answer ids with loss)
    # In the order the facts stand in the document: a multi-value answer lists them as read.
    values_of = {key: [facts[i][1] for i in order if facts[i][0] == key] for key in keys}
    asked = [keys[int(i)] for i in rng.permutation(len(keys))]
    if multi_value:
        key = keys[0]
        q = f"What are all the {noun}s of {key}? Answer: The {noun}s of {key} are:"
        queries.append((enc(q), enc(", ".join(values_of[key]) + ".")))
        asked = [k for k in asked if k != key]
    if len(asked) >= 3 and rng.random() < 0.2:  # several keys in one query
        group, asked = asked[:3], asked[3:]
        q = f"What are the {noun}s of {_join(group)}? Answer: The {noun}s of {_join(group)} are:"
        queries.append((enc(q), enc(", ".join(values_of[k][0] for k in group) + ".")))
    for key in asked:
        prompt = f"{question_t.format(k=key, n=noun)} Answer: {prefix_t.format(k=key, n=noun)}"
        queries.append((enc(prompt), enc(values_of[key][0] + ".")))
    rng.shuffle(queries)

    budget = room - sum(len(f) for f in fact_ids)
    kept = []
    for prompt, answer in queries:
        if len(prompt) + len(answer) + 4 <= budget:  # leave a little filler
            kept.append((prompt, answer))
            budget -= len(prompt) + len(answer)
    if not kept:  # too short for any question: a copying document instead
        budget += sum(len(f) for f in fact_ids)
        fact_ids = []
    span = None
    # Copying comes first: a model that memorises its corpora learns nothing from repeats it can
    # recite, so the span is random tokens, and at difficulty 0 every document has one.
    if (not kept or rng.random() < max(0.25, 1.0 - 2.0 * difficulty)) and budget - 8 >= 24:
        size = int(rng.integers(12, min(48, (budget - 8) // 2) + 1))
        span = filler.span(size, difficulty, rng)
        budget -= 2 * size
    filler_ids = filler.take(budget, rng)
    blocks = list(fact_ids)  # already in the document's order
    if span is not None:
        blocks.insert(int(rng.integers(len(blocks) + 1)), span)
    # Facts (and the span's first copy) at random places of the filler, never in the queries.
    cuts = np.sort(rng.integers(0, len(filler_ids) + 1, size=len(blocks)))
    doc = _Parts([], [])
    doc.add(np.array([tokenizer.bos_id], np.int32))
    previous = 0
    for cut, block in zip(cuts, blocks):
        doc.add(filler_ids[previous:cut])
        doc.add(block)
        previous = cut
    doc.add(filler_ids[previous:])
    for prompt, answer in kept:
        doc.add(prompt)
        doc.add(answer, loss_from=0)
    if span is not None:
        doc.add(span, loss_from=2)  # its second copy: predictable only by copying the first
    doc.add(np.array([tokenizer.eos_id], np.int32))
    tokens = np.concatenate(doc.ids)
    answer = np.concatenate(doc.loss)  # 1 on tokens that are answers
    assert len(tokens) == length, (len(tokens), length)
    loss_mask = np.zeros(length, np.float32)
    loss_mask[:-1] = answer[1:]  # the target of position t is token t + 1
    return tokens, loss_mask


def document_lengths(seq_len: int, rng: np.random.Generator, difficulty: float,
                     max_documents: int = MAX_DOCUMENTS) -> list[int]:
    """Returns the lengths of the documents of one row (they sum to seq_len; at most
    `max_documents`, each at least seq_len / max_documents and 64)."""
    shortest = max(64, -(-seq_len // max_documents))
    if shortest >= seq_len or rng.random() < 0.2 * difficulty:
        return [seq_len]
    longest = max(shortest, int(shortest + difficulty * (seq_len - shortest)))
    lengths, left = [], seq_len
    while left:
        n = int(rng.integers(shortest, longest + 1))
        if left - n < shortest:
            n = left
        lengths.append(n)
        left -= n
    return lengths


class RecallBatchIterator(Iterator[dict[str, np.ndarray]]):
    """Yields this host's rows of each global batch of recall documents: dicts of
    `[batch_size / host_count, seq_len]` arrays, packed as documents (segment ids from 1,
    positions restarting per document), like the pre-training batches."""

    def __init__(self, tokenizer: Tokenizer, corpora: Sequence[Corpus], *, batch_size: int, seq_len: int,
                 seed: int = 0, host_index: int = 0, host_count: int = 1, warmup_rows: int = 0):
        check_host_split(batch_size, host_index, host_count)
        if seq_len < 64:
            raise DataError(f"recall rows need seq_len >= 64, got {seq_len}")
        self.tokenizer, self.filler = tokenizer, Filler(corpora, tokenizer)
        self.batch_size, self.seq_len, self.seed = batch_size, seq_len, seed
        self.host_index, self.host_count, self.warmup_rows = host_index, host_count, warmup_rows
        self.step = 0

    def get_state(self) -> dict:
        return {"format": RECALL_STATE_FORMAT, "seed": self.seed, "batch_size": self.batch_size,
                "seq_len": self.seq_len, "warmup_rows": self.warmup_rows, "step": self.step}

    def set_state(self, state: dict) -> None:
        check_same_iterator("recall iterator", state, self.get_state())
        self.step = int(state["step"])

    def difficulty(self, row: int) -> float:
        return 1.0 if self.warmup_rows <= 0 else min(1.0, row / self.warmup_rows)

    def row(self, index: int) -> dict[str, np.ndarray]:
        """Returns row `index` of the run (a pure function of seed and index)."""
        rng = np.random.default_rng([self.seed, index, 0x7EC])
        difficulty = self.difficulty(index)
        n = self.seq_len
        out = {k: np.zeros(n, np.int32) for k in ("tokens", "targets", "segment_ids", "positions")}
        out["loss_mask"] = np.zeros(n, np.float32)
        p = 0
        for k, length in enumerate(document_lengths(n, rng, difficulty), 1):
            tokens, loss_mask = recall_document(self.tokenizer, self.filler, length, rng, difficulty)
            out["tokens"][p : p + length] = tokens
            out["targets"][p : p + length - 1] = tokens[1:]
            out["segment_ids"][p : p + length] = k
            out["positions"][p : p + length] = np.arange(length)
            out["loss_mask"][p : p + length] = loss_mask
            p += length
        return out

    def __next__(self) -> dict[str, np.ndarray]:
        per_host = self.batch_size // self.host_count
        first = self.step * self.batch_size + self.host_index * per_host
        rows = [self.row(first + r) for r in range(per_host)]
        self.step += 1
        return {key: np.stack([r[key] for r in rows]) for key in rows[0]}
