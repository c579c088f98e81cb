"""A bAbI-style world simulation for BABILong's five task families.

Each story is a short list of sentences produced by simulating actors moving between
locations, picking up, dropping and giving objects (or by stating spatial relations); the
question's answer is read from the simulated world, never from the text, so a test can check
it against an independent reading of the sentences.

- qa1 single supporting fact:  "Where is Mary?"
- qa2 two supporting facts:    "Where is the football?"
- qa3 three supporting facts:  "Where was the apple before the kitchen?"
- qa4 two-argument relations:  "What is north of the garden?" / "What is the garden south of?"
- qa5 three-argument relations: "Who gave the cake to Fred?" / "Who did Mary give the cake to?" /
  "What did Mary give to Fred?" / "Who received the cake?"
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ACTORS = ("Mary", "John", "Sandra", "Daniel", "Fred", "Bill", "Julie", "Jeff")
LOCATIONS = ("bathroom", "hallway", "kitchen", "garden", "office", "bedroom", "cellar", "garage")
OBJECTS = ("apple", "football", "milk", "cake", "book", "key")
MOVE_VERBS = ("moved", "went", "journeyed", "travelled")
DIRECTIONS = {"north": "south", "south": "north", "east": "west", "west": "east"}
TASKS = ("qa1", "qa2", "qa3", "qa4", "qa5")


@dataclass(frozen=True)
class Story:
    """A bAbI story: its sentences, the question, the answer and the task family."""

    task: str
    sentences: tuple[str, ...]
    question: str
    answer: str


class _World:
    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.where: dict[str, str] = {}          # actor -> location
        self.holder: dict[str, str] = {}         # object -> actor holding it
        self.placed: dict[str, str] = {}         # object -> location where it lies
        self.history: dict[str, list[str]] = {}  # object -> its successive locations
        self.sentences: list[str] = []

    def pick(self, items):
        return items[int(self.rng.integers(len(items)))]

    def _object_moved(self, obj: str, loc: str) -> None:
        hist = self.history.setdefault(obj, [])
        if not hist or hist[-1] != loc:
            hist.append(loc)

    def move(self, actor: str) -> None:
        loc = self.pick([x for x in LOCATIONS if x != self.where.get(actor)])
        self.where[actor] = loc
        self.sentences.append(f"{actor} {self.pick(MOVE_VERBS)} to the {loc}.")
        for obj, who in self.holder.items():
            if who == actor:
                self._object_moved(obj, loc)

    def take(self, actor: str, obj: str) -> None:
        self.holder[obj] = actor
        self.placed.pop(obj, None)
        self._object_moved(obj, self.where[actor])
        self.sentences.append(f"{actor} {self.pick(('picked up', 'got', 'grabbed'))} the {obj}.")

    def drop(self, actor: str, obj: str) -> None:
        del self.holder[obj]
        self.placed[obj] = self.where[actor]
        self.sentences.append(f"{actor} {self.pick(('dropped', 'put down', 'left'))} the {obj}.")

    def location_of(self, obj: str) -> str | None:
        if obj in self.holder:
            return self.where.get(self.holder[obj])
        return self.placed.get(obj)

    def step(self, actors, objects) -> None:
        actor = self.pick(actors)
        here = [o for o in objects if o not in self.holder and o not in self.placed]
        held = [o for o, who in self.holder.items() if who == actor]
        roll = self.rng.random()
        if actor in self.where and held and roll < 0.25:
            self.drop(actor, self.pick(held))
        elif actor in self.where and here and roll < 0.55:
            self.take(actor, self.pick(here))
        else:
            self.move(actor)


def _movement_story(rng, task: str, n_events: int) -> Story | None:
    world = _World(rng)
    actors = list(rng.choice(ACTORS, size=3, replace=False))
    objects = list(rng.choice(OBJECTS, size=2, replace=False)) if task != "qa1" else []
    for _ in range(n_events):
        world.step(actors, objects)
    if task == "qa1":
        known = [a for a in actors if a in world.where]
        if not known:
            return None
        actor = world.pick(known)
        return Story(task, tuple(world.sentences), f"Where is {actor}?", world.where[actor])
    if task == "qa2":
        known = [o for o in objects if world.location_of(o)]
        if not known:
            return None
        obj = world.pick(known)
        return Story(task, tuple(world.sentences), f"Where is the {obj}?", world.location_of(obj))
    # qa3: a place the object visited exactly once, and where it was just before.
    options = [(o, i) for o in objects for i, loc in enumerate(world.history.get(o, []))
               if i > 0 and world.history[o].count(loc) == 1]
    if not options:
        return None
    obj, i = world.pick(options)
    hist = world.history[obj]
    return Story(task, tuple(world.sentences), f"Where was the {obj} before the {hist[i]}?", hist[i - 1])


def _relation_story(rng) -> Story:
    a, b, c = (str(x) for x in rng.choice(LOCATIONS, size=3, replace=False))
    d1, d2 = (str(x) for x in rng.choice(list(DIRECTIONS), size=2, replace=True))
    facts = [(a, d1, b), (c, d2, a)]
    sentences = tuple(f"The {x} is {d} of the {y}." for x, d, y in facts)
    x, d, y = facts[int(rng.integers(2))]
    if rng.random() < 0.5:
        return Story("qa4", sentences, f"What is {d} of the {y}?", x)
    return Story("qa4", sentences, f"What is the {x} {d} of?", y)


def _giving_story(rng, n_gives: int) -> Story:
    objects = [str(x) for x in rng.choice(OBJECTS, size=n_gives, replace=False)]
    gives, pairs = [], set()
    while len(gives) < n_gives:
        giver, receiver = (str(x) for x in rng.choice(ACTORS, size=2, replace=False))
        if (giver, receiver) not in pairs:  # so "what did G give to R?" has one answer
            pairs.add((giver, receiver))
            gives.append((giver, objects[len(gives)], receiver))
    sentences = []
    for giver, obj, receiver in gives:
        loc = LOCATIONS[int(rng.integers(len(LOCATIONS)))]
        sentences += [f"{giver} went to the {loc}.", f"{giver} gave the {obj} to {receiver}."]
    giver, obj, receiver = gives[int(rng.integers(n_gives))]
    form = int(rng.integers(4))
    question, answer = [
        (f"Who gave the {obj} to {receiver}?", giver),
        (f"Who did {giver} give the {obj} to?", receiver),
        (f"What did {giver} give to {receiver}?", obj),
        (f"Who received the {obj}?", receiver),
    ][form]
    return Story("qa5", tuple(sentences), question, answer)


def babi_story(rng: np.random.Generator, task: str | None = None, n_events: int = 12) -> Story:
    """Returns one story of `task` (one of TASKS; random if None) with about `n_events` facts."""
    task = task or TASKS[int(rng.integers(len(TASKS)))]
    if task not in TASKS:
        raise ValueError(f"unknown bAbI task {task!r}; known: {TASKS}")
    if task == "qa4":
        return _relation_story(rng)
    if task == "qa5":
        return _giving_story(rng, min(max(2, n_events // 4), len(OBJECTS)))
    attempt = 0
    while True:  # some simulations end with nothing to ask: simulate again, a little longer
        story = _movement_story(rng, task, max(n_events, 4) + attempt // 4)
        if story is not None:
            return story
        attempt += 1
