"""Real question-answer pairs with their evidence, from offline material.

- "code-default": facts mined from the AST of Django's source (the builtin:code archive).
  Evidence is a function's real `def` header, question "What is the default value of
  parameter p of mod.func?".
- "speaker": Shakespeare's speech blocks (from the books corpus). Evidence is the block,
  question 'In Hamlet, which character says: "..."?', answer the speaker label as printed.
- "babi-qa1" .. "babi-qa5": stories of the bAbI world simulation (_babi.py).
- "passkey" (not in the SFT default, QA_KINDS): a made-up name's access code, 5-7 digits, among
  other names' codes: retrieving a fact by its key, the skill a needle-in-a-haystack test asks
  for, in other words and with other keys than `reftrain.eval`'s needle. The answer restates
  the fact ("The access code of Pexhul is 4109521."): copying a line after its restated
  beginning is the skill a needle prompt, which ends in its needle's beginning, asks for, and a
  model trained from scratch did not learn it from the code alone (issue 20's first H200 run:
  answer loss flat at 1.6 nats while the corpus was memorised). The `small` preset's base stage
  mixes it in (KNOWN_QA_KINDS).
"""

from __future__ import annotations

import ast
import configparser
import functools
import re
from dataclasses import dataclass

import numpy as np

from reftrain.data._babi import babi_story
from reftrain.data._builtin import CODE_FILES, books_files
from reftrain.data._cache import DataError
from reftrain.data._fetch import archive_files

QA_KINDS = ("code-default", "speaker", "babi")  # the SFT default
KNOWN_QA_KINDS = QA_KINDS + ("passkey",)
_AST_MODULES = tuple(f"django/{m}.py" for m in (
    "core/paginator core/mail/message core/management/base core/serializers/base core/signing "
    "core/validators core/cache/backends/base db/models/query db/models/base db/models/fields/__init__ "
    "db/models/fields/related db/models/sql/query db/backends/base/schema forms/fields forms/forms "
    "forms/models forms/widgets forms/formsets http/request http/response template/base "
    "template/defaultfilters test/client test/testcases test/runner urls/resolvers utils/text "
    "utils/html utils/timezone utils/feedgenerator views/generic/base contrib/auth/models "
    "contrib/admin/options contrib/admin/sites contrib/sessions/backends/base"
).split())


@dataclass(frozen=True)
class QAPair:
    """A question, its short answer, and the evidence text from which the answer follows.

    `subject` names what the question is about; a distractor never shares a target's subject.
    """

    question: str
    answer: str
    evidence: str
    kind: str
    subject: str


def _defaults(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> list[tuple[str, ast.expr]]:
    args = fn.args
    positional = args.posonlyargs + args.args
    pairs = list(zip([a.arg for a in positional[len(positional) - len(args.defaults):]], args.defaults))
    pairs += [(a.arg, d) for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is not None]
    return pairs


@functools.lru_cache(maxsize=1)
def code_default_pairs() -> tuple[QAPair, ...]:
    """Returns QA pairs about literal parameter defaults of Django's functions (about a thousand)."""
    (archive, _), pairs, seen = CODE_FILES[0], [], set()
    root, found = archive_files(archive, _AST_MODULES)
    if missing := sorted(set(_AST_MODULES) - set(found)):
        raise DataError(f"{archive.requirement} lacks the modules {missing}")
    for rel in _AST_MODULES:
        source = (root / rel).read_bytes().decode("utf-8", errors="replace")
        lines = source.splitlines()
        module = rel.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
        tree = ast.parse(source)
        scopes = [(None, tree)] + [(n.name, n) for n in tree.body if isinstance(n, ast.ClassDef)]
        for cls, scope in scopes:
            for fn in scope.body:
                if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) or not fn.body:
                    continue
                header = "\n".join(lines[fn.lineno - 1 : fn.body[0].lineno - 1]).rstrip()
                if not header.rstrip().endswith(":") or len(header) > 600:
                    continue  # a body on the def line, or a huge signature
                qualname = f"{module}.{cls + '.' if cls else ''}{fn.name}"
                context = f"In module {module}:\n" + (f"class {cls}:\n" if cls else "")
                for param, default in _defaults(fn):
                    if not isinstance(default, ast.Constant) or (qualname, param) in seen:
                        continue
                    answer = ast.unparse(default)
                    if len(answer) > 40 or "\n" in answer:
                        continue
                    seen.add((qualname, param))
                    pairs.append(QAPair(
                        question=f"What is the default value of parameter {param} of {qualname}?",
                        answer=answer, evidence=context + header, kind="code-default",
                        subject=qualname))
    return tuple(pairs)


_SPEAKER = re.compile(r"^[A-Z][A-Za-z'&\- ]{0,24}\.$")


@functools.lru_cache(maxsize=1)
def speaker_pairs() -> tuple[QAPair, ...]:
    """Returns QA pairs "which character says ...?" from the Shakespeare plays."""
    files = [(t, p) for t, p in books_files() if t.startswith("shkspr/")]
    meta = configparser.ConfigParser(interpolation=None)
    meta.read(files[0][1].parent / "metadata.txt", encoding="utf-8")
    raw, counts = [], {}
    for _, f in files:
        title = meta.get(f.stem, "title", fallback=f.stem.removesuffix("_gut").replace("_", " ").title())
        for block in re.split(r"\n\s*\n", f.read_text(encoding="utf-8", errors="replace")):
            lines = [ln.rstrip() for ln in block.strip("\n").splitlines()]
            if len(lines) < 2 or not _SPEAKER.match(lines[0]) or lines[0].upper() == lines[0]:
                continue
            quote = lines[1].strip()
            if len(quote) < 30 or not quote[0].isalpha():
                continue
            raw.append((title, lines[0][:-1], quote, "\n".join(lines)))
            counts[(title, quote)] = counts.get((title, quote), 0) + 1
    return tuple(
        QAPair(question=f'In {title}, which character says: "{quote}"?', answer=speaker,
               evidence=block, kind="speaker", subject=f"{title}:{quote}")
        for title, speaker, quote, block in raw if counts[(title, quote)] == 1)


def babi_pair(rng: np.random.Generator, task: str | None = None) -> QAPair:
    """Returns a fresh bAbI story as a QAPair (evidence: its sentences, one per line)."""
    story = babi_story(rng, task)
    return QAPair(story.question, story.answer, "\n".join(story.sentences), f"babi-{story.task}",
                  subject="babi")


_SYLLABLES = ("ka", "lo", "mi", "ra", "ten", "vo", "zu", "bel", "dor", "fi", "gan", "hul", "jo", "nir", "pex", "sal",
              "tor", "ux", "wen", "yas")


def passkey_pair(rng: np.random.Generator) -> QAPair:
    """Returns a made-up name (2-3 syllables) and its access code (5-7 digits); the answer is the
    fact itself, restated (the module docstring says why)."""
    name = "".join(rng.choice(_SYLLABLES, size=int(rng.integers(2, 4)))).capitalize()
    code = str(int(rng.integers(10**4, 10**7)))
    fact = f"The access code of {name} is {code}."
    return QAPair(f"What is the access code of {name}?", fact, fact, "passkey", subject=name)


def draw_pair(rng: np.random.Generator, kind: str) -> QAPair:
    """Returns one QA pair of `kind` (one of KNOWN_QA_KINDS), drawn with `rng`."""
    if kind == "babi":
        return babi_pair(rng)
    if kind == "passkey":
        return passkey_pair(rng)
    pool = code_default_pairs() if kind == "code-default" else speaker_pairs()
    return pool[int(rng.integers(len(pool)))]


def compatible(target: QAPair, distractor: QAPair) -> bool:
    """Returns whether `distractor` may sit in a target's context without changing its answer."""
    if target.kind.startswith("babi"):
        return not distractor.kind.startswith("babi")  # stories share names and places
    return distractor.subject != target.subject
