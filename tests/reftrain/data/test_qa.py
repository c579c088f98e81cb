"""Synthetic QA: answers follow from the evidence, evidence sits at the requested depth."""

from __future__ import annotations

import ast
import re
import textwrap

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from reftrain.data import (
    BABI_TASKS,
    KNOWN_QA_KINDS,
    QA_KINDS,
    babi_story,
    corpus_from_documents,
    make_qa_batches,
    make_qa_sample,
    speaker_pairs,
    code_default_pairs,
)


def solve_babi(sentences: list[str], question: str) -> str:
    """Answers a bAbI question by reading the sentences (independent of the simulation)."""
    where, holder, lying, history, gives, rel = {}, {}, {}, {}, [], []

    def moved(obj, loc):
        h = history.setdefault(obj, [])
        if not h or h[-1] != loc:
            h.append(loc)

    for s in sentences:
        if m := re.fullmatch(r"(\w+) (?:moved|went|journeyed|travelled) to the (\w+)\.", s):
            where[m[1]] = m[2]
            for obj, who in holder.items():
                if who == m[1]:
                    moved(obj, m[2])
        elif m := re.fullmatch(r"(\w+) (?:picked up|got|grabbed) the (\w+)\.", s):
            holder[m[2]] = m[1]
            lying.pop(m[2], None)
            moved(m[2], where[m[1]])
        elif m := re.fullmatch(r"(\w+) (?:dropped|put down|left) the (\w+)\.", s):
            del holder[m[2]]
            lying[m[2]] = where[m[1]]
        elif m := re.fullmatch(r"(\w+) gave the (\w+) to (\w+)\.", s):
            gives.append((m[1], m[2], m[3]))
        elif m := re.fullmatch(r"The (\w+) is (\w+) of the (\w+)\.", s):
            rel.append((m[1], m[2], m[3]))
        else:
            raise AssertionError(f"unparsed sentence {s!r}")
    if m := re.fullmatch(r"Where is (\w+)\?", question):
        return where[m[1]]
    if m := re.fullmatch(r"Where is the (\w+)\?", question):
        return where[holder[m[1]]] if m[1] in holder else lying[m[1]]
    if m := re.fullmatch(r"Where was the (\w+) before the (\w+)\?", question):
        h = history[m[1]]
        return h[h.index(m[2]) - 1]
    if m := re.fullmatch(r"What is (\w+) of the (\w+)\?", question):
        (x,) = [a for a, d, b in rel if d == m[1] and b == m[2]]
        return x
    if m := re.fullmatch(r"What is the (\w+) (\w+) of\?", question):
        (y,) = [b for a, d, b in rel if a == m[1] and d == m[2]]
        return y
    if m := re.fullmatch(r"Who gave the (\w+) to (\w+)\?", question):
        (g,) = [g for g, o, r in gives if o == m[1] and r == m[2]]
        return g
    if m := re.fullmatch(r"Who did (\w+) give the (\w+) to\?", question):
        (r,) = [r for g, o, r in gives if g == m[1] and o == m[2]]
        return r
    if m := re.fullmatch(r"What did (\w+) give to (\w+)\?", question):
        (o,) = [o for g, o, r in gives if g == m[1] and r == m[2]]
        return o
    if m := re.fullmatch(r"Who received the (\w+)\?", question):
        (r,) = [r for g, o, r in gives if o == m[1]]
        return r
    raise AssertionError(f"unparsed question {question!r}")


@given(seed=st.integers(0, 2**32 - 1), task=st.sampled_from(BABI_TASKS), n_events=st.integers(2, 30))
def test_babi_answer_follows_from_the_story(seed, task, n_events):
    story = babi_story(np.random.default_rng(seed), task, n_events)
    assert story.task == task
    assert solve_babi(list(story.sentences), story.question) == story.answer


def code_default_from_header(evidence: str, question: str) -> str:
    """Reads a parameter's default from the `def` header in the evidence with the ast module."""
    body = evidence.split("\n", 1)[1]  # drop "In module m:"
    if body.startswith("class "):
        body = body.split("\n", 1)[1]
    fn = ast.parse(textwrap.dedent(body) + "\n    pass").body[0]
    param = re.fullmatch(r"What is the default value of parameter (\w+) of .+\?", question)[1]
    args = fn.args
    positional = args.posonlyargs + args.args
    defaults = dict(zip([a.arg for a in positional[len(positional) - len(args.defaults):]], args.defaults))
    defaults |= {a.arg: d for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is not None}
    return ast.unparse(defaults[param])


def recover_answer(evidence: str, question: str, kind: str) -> str:
    """Returns the answer as an independent reader of the evidence finds it."""
    if kind.startswith("babi"):
        return solve_babi(evidence.splitlines(), question)
    if kind == "code-default":
        return code_default_from_header(evidence, question)
    if kind == "passkey":  # the answer restates the fact
        name = re.fullmatch(r"What is the access code of (\w+)\?", question).group(1)
        code = re.fullmatch(rf"The access code of {name} is (\d+)\.", evidence).group(1)
        return f"The access code of {name} is {code}."
    first, quote = evidence.splitlines()[:2]
    assert f'"{quote.strip()}"' in question
    return first.removesuffix(".")


def test_code_default_answer_follows_from_the_def_header():
    pairs = code_default_pairs()
    assert len(pairs) > 500
    for pair in pairs:
        assert recover_answer(pair.evidence, pair.question, pair.kind) == pair.answer, pair


def test_speaker_answer_heads_its_evidence():
    pairs = speaker_pairs()
    assert len(pairs) > 500
    for pair in pairs:
        assert recover_answer(pair.evidence, pair.question, pair.kind) == pair.answer, pair


@pytest.fixture(scope="module")
def haystack(tokenizer):
    text = "The quick brown fox jumps over the lazy dog while the river runs to the sea. " * 400
    return corpus_from_documents("hay", [tokenizer.encode(text)], ["hay"])


@given(depth=st.floats(0.0, 1.0), seed=st.integers(0, 10**6), kind=st.sampled_from(KNOWN_QA_KINDS),
       length=st.integers(600, 1500))
def test_sample_places_evidence_at_depth_and_masks_only_the_answer(tokenizer, haystack, depth, seed,
                                                                    kind, length):
    s = make_qa_sample(tokenizer, haystack, length=length, seed=seed, depth=depth, kind=kind)
    assert s.tokens.shape == (length,) and s.tokens.dtype == np.int32 and s.length == length
    assert s.tokens[0] == tokenizer.bos_id and s.tokens[-1] == tokenizer.eos_id
    # The evidence is where depth says, as its own tokens.
    a, b = s.evidence_span
    evidence_ids = tokenizer.encode(f"\n{s.evidence}\n")
    assert np.array_equal(s.tokens[a:b], evidence_ids)
    context_len = length - 1 - len(tokenizer.encode(f"\n\nQuestion: {s.question}\nAnswer:")) \
        - len(tokenizer.encode(s.answer)) - 1
    assert a - 1 == round(depth * (context_len - len(evidence_ids)))
    # The question and answer close the sample; loss only where the target is an answer token.
    a0, a1 = s.answer_span
    assert tokenizer.decode(s.tokens[a0:a1]) == s.answer
    assert recover_answer(s.evidence, s.question, s.kind) == s.answer
    assert np.flatnonzero(s.loss_mask).tolist() == list(range(a0 - 1, a1 - 1))


@given(seed=st.integers(0, 10**6))
def test_a_passkey_sits_among_other_names_codes_and_only_its_own_line_answers(tokenizer, haystack, seed):
    s = make_qa_sample(tokenizer, haystack, length=1024, seed=seed, kind="passkey")
    context, answer = tokenizer.decode(s.tokens.tolist()).split("\n\nQuestion: ")
    lines = re.findall(r"The access code of (\w+) is (\d+)\.", context)
    names = [name for name, _ in lines]
    target = re.fullmatch(r"What is the access code of (\w+)\?", s.question).group(1)
    assert names.count(target) == 1 and len(lines) == 1 + s.distractors  # no look-alike shares its name
    code = dict(lines)[target]
    assert s.answer == f"The access code of {target} is {code}." and 5 <= len(code) <= 7
    assert answer.endswith(f"\nAnswer: {s.answer}") or answer.endswith(f"\nAnswer:{s.answer}")


def test_qa_batches_resume_and_shard(tokenizer, haystack):
    kw = dict(batch_size=4, seq_len=700, seed=5, tokenizer=tokenizer, haystack=haystack, min_length=500)
    it = make_qa_batches(**kw)
    next(it)
    state = it.get_state()
    expected = next(it)
    halves = [make_qa_batches(**kw, host_index=h, host_count=2) for h in range(2)]
    for h in halves:
        h.set_state(state)
    parts = [next(h) for h in halves]
    for key, value in expected.items():
        assert np.array_equal(np.concatenate([p[key] for p in parts]), value)
    b = expected
    real = b["segment_ids"] > 0
    assert (b["loss_mask"][~real] == 0).all() and (b["tokens"][~real] == 0).all()
    assert np.array_equal(b["targets"][:, :-1][real[:, 1:]], b["tokens"][:, 1:][real[:, 1:]])
