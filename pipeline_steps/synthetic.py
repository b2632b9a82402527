"""A seeded sentence-pair paraphrase task whose labels need both sentences.

Every pair renders a small structured event twice. A paraphrase (label 1) renders the *same* event
with independently chosen surface forms (active/passive voice, dative alternation, synonyms, digits
or number words, contracted or full negation, clause order). A non-paraphrase (label 0) renders a
minimally changed event: negation flipped, roles swapped, a number, verb, noun, day, person or
action replaced, or the order of two events reversed. Each surface choice is drawn from the same
distribution in both classes and every replacement is drawn from the same pool as the original,
so the words of either sentence alone say almost nothing about the label: a bag-of-words model
stays near chance, while a model that compares the two sentences can reach high accuracy.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, replace
from typing import Callable

NAMES = ("Anna", "Tom", "Maria", "James", "Laura", "David", "Sarah", "Peter", "Emma", "Daniel", "Julia",
         "Michael", "Sophie", "Paul", "Clara", "Mark", "Helen", "George", "Alice", "Frank", "Nina", "Robert",
         "Grace", "Henry", "Lucy", "Victor", "Rachel", "Simon", "Diana", "Oscar")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
                "eleven", "twelve")
COUNTS = tuple(range(2, 13))
# verb sense -> synonymous (base, past, participle) forms; all take "X V Y N" and "X V N to Y"
VERBS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "give": (("give", "gave", "given"), ("hand", "handed", "handed")),
    "send": (("send", "sent", "sent"), ("mail", "mailed", "mailed")),
    "lend": (("lend", "lent", "lent"), ("loan", "loaned", "loaned")),
    "sell": (("sell", "sold", "sold"),),
    "show": (("show", "showed", "shown"),),
    "offer": (("offer", "offered", "offered"),),
    "throw": (("throw", "threw", "thrown"), ("toss", "tossed", "tossed")),
    "promise": (("promise", "promised", "promised"),),
}
# noun sense -> synonymous plural forms
NOUNS: dict[str, tuple[str, ...]] = {
    "gift": ("gifts", "presents"), "photo": ("photos", "pictures"), "car": ("cars", "automobiles"),
    "sofa": ("sofas", "couches"), "bag": ("bags", "sacks"), "book": ("books",), "letter": ("letters",),
    "ticket": ("tickets",), "apple": ("apples",), "map": ("maps",), "coin": ("coins",), "key": ("keys",),
}
# action sense -> synonymous past-tense phrases
ACTIONS: dict[str, tuple[str, ...]] = {
    "leave_office": ("left the office", "departed from the office"),
    "call_doctor": ("called the doctor", "phoned the doctor"),
    "finish_report": ("finished the report", "completed the report"),
    "reach_station": ("arrived at the station", "reached the station"),
    "buy_bread": ("bought bread", "purchased bread"),
    "answer_email": ("answered the email", "replied to the email"),
    "lock_door": ("locked the door",),
    "feed_cat": ("fed the cat",),
    "start_car": ("started the car",),
    "open_window": ("opened the window",),
}


@dataclass(frozen=True)
class Transfer:
    """``agent`` (did not) ``verb`` ``count`` ``noun`` to ``recipient`` on ``day``."""

    agent: str
    recipient: str
    verb: str
    count: int
    noun: str
    day: str
    negated: bool


@dataclass(frozen=True)
class Sequence:
    """``first_person`` did ``first_action``, then ``second_person`` did ``second_action``."""

    first_person: str
    first_action: str
    second_person: str
    second_action: str


@dataclass(frozen=True)
class Pair:
    """One generated example; ``kind`` is ``paraphrase`` or the change that makes it a non-paraphrase."""

    text_a: str
    text_b: str
    label: int
    kind: str


def _other(rng: random.Random, pool, *exclude):
    choices = [x for x in pool if x not in exclude]
    return rng.choice(choices)


def _count_text(rng: random.Random, n: int) -> str:
    return NUMBER_WORDS[n] if rng.random() < 0.5 else str(n)


def _sentence(text: str) -> str:
    return text[0].upper() + text[1:] + "."


TRANSFER_FORMS = 4  # active double object, active with "to", passive (recipient subject), passive (object subject)
SEQUENCE_FORMS = 5  # "A before B", "B after A", "before B, A", "after A, B", "first A, and then B"


def render_transfer(e: Transfer, rng: random.Random, form: int | None = None) -> str:
    """One surface form of a Transfer event (voice, dative order, synonyms, number style, negation style, day position).

    ``form`` fixes the sentence frame (0..TRANSFER_FORMS-1); None draws it.
    """
    base, past, part = rng.choice(VERBS[e.verb])
    obj = f"{_count_text(rng, e.count)} {rng.choice(NOUNS[e.noun])}"
    contracted = rng.random() < 0.5
    form = rng.randrange(TRANSFER_FORMS) if form is None else form
    if form < 2:  # active voice
        verb = (("didn't " if contracted else "did not ") + base) if e.negated else past
        core = (f"{e.agent} {verb} {e.recipient} {obj}" if form == 0
                else f"{e.agent} {verb} {obj} to {e.recipient}")
    elif form == 2:  # passive, recipient as subject
        aux = ("wasn't" if contracted else "was not") if e.negated else "was"
        core = f"{e.recipient} {aux} {part} {obj} by {e.agent}"
    else:  # passive, object as subject
        aux = ("weren't" if contracted else "were not") if e.negated else "were"
        core = f"{obj} {aux} {part} to {e.recipient} by {e.agent}"
    if rng.random() < 0.5:
        return _sentence(f"on {e.day}, {core}")
    return _sentence(f"{core} on {e.day}")


def render_sequence(e: Sequence, rng: random.Random, form: int | None = None) -> str:
    """One surface form of a Sequence event (before/after/then, clause order, synonyms).

    ``form`` fixes the connective and clause order (0..SEQUENCE_FORMS-1); None draws it.
    """
    first = f"{e.first_person} {rng.choice(ACTIONS[e.first_action])}"
    second = f"{e.second_person} {rng.choice(ACTIONS[e.second_action])}"
    form = rng.randrange(SEQUENCE_FORMS) if form is None else form
    text = (f"{first} before {second}", f"{second} after {first}", f"before {second}, {first}",
            f"after {first}, {second}", f"first {first}, and then {second}")[form]
    return _sentence(text)


def random_transfer(rng: random.Random) -> Transfer:
    """A Transfer event with every field drawn uniformly."""
    agent = rng.choice(NAMES)
    return Transfer(agent, _other(rng, NAMES, agent), rng.choice(list(VERBS)), rng.choice(COUNTS),
                    rng.choice(list(NOUNS)), rng.choice(DAYS), rng.random() < 0.5)


def random_sequence(rng: random.Random) -> Sequence:
    """A Sequence event with two different people and two different actions."""
    p1 = rng.choice(NAMES)
    a1 = rng.choice(list(ACTIONS))
    return Sequence(p1, a1, _other(rng, NAMES, p1), _other(rng, ACTIONS, a1))


# Non-paraphrase changes: (name, weight, function from event to a changed event)
TRANSFER_CHANGES: tuple[tuple[str, float, Callable[[Transfer, random.Random], Transfer]], ...] = (
    ("negation", 0.25, lambda e, r: replace(e, negated=not e.negated)),
    ("role_swap", 0.1, lambda e, r: replace(e, agent=e.recipient, recipient=e.agent)),
    ("number", 0.2, lambda e, r: replace(e, count=_other(r, COUNTS, e.count))),
    ("verb", 0.2, lambda e, r: replace(e, verb=_other(r, VERBS, e.verb))),
    ("day", 0.1, lambda e, r: replace(e, day=_other(r, DAYS, e.day))),
    ("noun", 0.1, lambda e, r: replace(e, noun=_other(r, NOUNS, e.noun))),
)
SEQUENCE_CHANGES: tuple[tuple[str, float, Callable[[Sequence, random.Random], Sequence]], ...] = (
    ("order", 0.2, lambda e, r: Sequence(e.second_person, e.second_action, e.first_person, e.first_action)),
    ("person", 0.4, lambda e, r: replace(e, second_person=_other(r, NAMES, e.first_person, e.second_person))
     if r.random() < 0.5 else replace(e, first_person=_other(r, NAMES, e.first_person, e.second_person))),
    ("action", 0.4, lambda e, r: replace(e, second_action=_other(r, ACTIONS, e.first_action, e.second_action))
     if r.random() < 0.5 else replace(e, first_action=_other(r, ACTIONS, e.first_action, e.second_action))),
)
SEQUENCE_SHARE = 0.35  # fraction of pairs built from Sequence events (the rest: Transfer events)
# Changes that keep every word and move only roles. They are drawn only for pairs whose two sentences
# share one sentence frame, so the difference is where the names stand rather than a voice or connective
# rewrite on top (which a small model does not learn from a few thousand examples). Every pair shares its
# frame with the same probability whatever its label, so "same frame" says nothing about the label.
SAME_FRAME_CHANGES = frozenset({"role_swap", "order"})
SAME_FRAME_SHARE = 0.5


def make_pair(rng: random.Random, label: int) -> Pair:
    """One pair with the given label: a random event rendered twice, changed first when ``label`` is 0."""
    if rng.random() < SEQUENCE_SHARE:
        event, render, changes, n_forms = random_sequence(rng), render_sequence, SEQUENCE_CHANGES, SEQUENCE_FORMS
    else:
        event, render, changes, n_forms = random_transfer(rng), render_transfer, TRANSFER_CHANGES, TRANSFER_FORMS
    same_frame = rng.random() < SAME_FRAME_SHARE
    kind, other = "paraphrase", event
    if label == 0:
        allowed = [c for c in changes if same_frame or c[0] not in SAME_FRAME_CHANGES]
        kind, _, change = rng.choices(allowed, weights=[w for _, w, _ in allowed])[0]
        other = change(event, rng)
    form_a = rng.randrange(n_forms)
    form_b = form_a if same_frame else _other(rng, range(n_forms), form_a)
    a, b = render(event, rng, form_a), render(other, rng, form_b)
    return Pair(a, b, label, kind) if rng.random() < 0.5 else Pair(b, a, label, kind)


def generate_splits(sizes: dict[str, int], seed: int) -> dict[str, list[Pair]]:
    """Balanced splits of the requested sizes, reproducible from ``seed``; no sentence pair occurs twice."""
    seen: set[tuple[str, str]] = set()
    out: dict[str, list[Pair]] = {}
    for offset, (split, n) in enumerate(sizes.items()):
        if n < 2:
            raise ValueError(f"split {split!r}: need at least 2 pairs, got {n}")
        rng = random.Random(f"{seed}:{offset}:{split}")
        labels = [i % 2 for i in range(n)]
        rng.shuffle(labels)
        pairs = []
        for label in labels:
            for _ in range(1000):
                pair = make_pair(rng, label)
                key = tuple(sorted((pair.text_a, pair.text_b)))
                if key not in seen:
                    break
            else:
                raise RuntimeError(f"split {split!r}: cannot find a new unique pair after 1000 tries")
            seen.add(key)
            pairs.append(pair)
        out[split] = pairs
    return out


def kind_counts(pairs: list[Pair]) -> dict[str, int]:
    """How many pairs of each kind (paraphrase and each non-paraphrase change)."""
    return dict(sorted(Counter(p.kind for p in pairs).items()))
