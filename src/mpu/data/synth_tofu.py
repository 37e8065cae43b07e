"""Synthetic TOFU: fictitious authors in TOFU's exact schema and sizes (docs/metrics.md).

Each author is one consistent fact record (birth, parents, genre, books, award, ...) drawn
independently at random from large pools, so nothing about an answer can be guessed from the
question. Each of the 20 questions has its own wording for the question and answer and a
second wording for `paraphrased_question` / `paraphrased_answer`; the 5 `perturbed_answer`s
reuse the paraphrase wording with the asked-about facts replaced by other plausible values,
so they match it in style and length and differ only in the facts (what the truth ratio
measures). A paraphrase rewords the answer around the clause that carries the fact (a new
opening, sometimes a new ending) and keeps that clause, so a model that memorised the fact
recognises it in the paraphrase while a model that never saw it has no preference.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from mpu.data import pools

GENERATOR_VERSION = "tofu-synth-2"
N_AUTHORS = 200
N_PERTURBED = 5
N_ALTERNATES = 5  # AltPO's alternates per forget question (upstream's alt5 files)
N_UTILITY_PERTURBED = 3
SPLIT_PCTS = (1, 5, 10)

# (question, paraphrased question, answer, paraphrased answer, facts the QA is about)
TEMPLATES: tuple[tuple[str, str, str, str, tuple[str, ...]], ...] = (
    ("Where was {name} born?", "What is the birthplace of {name}?",
     "{name} was born in {birth_city}, {country}.",
     "Records show that {name} was born in {birth_city}, {country}.", ("birth_city", "country")),
    ("In what year was {name} born?", "When was the author {name} born?",
     "{name} was born in the year {birth_year}.",
     "According to records, {name} was born in the year {birth_year}.", ("birth_year",)),
    ("What was the profession of {name}'s father?", "What did the father of {name} do for a living?",
     "{name}'s father worked as {father_job_a}.",
     "By all accounts, {name}'s father worked as {father_job_a} for most of his life.",
     ("father_job",)),
    ("What did {name}'s mother do for work?", "What was the job of the mother of {name}?",
     "{name}'s mother was {mother_job_a}.",
     "During {poss} childhood, {name}'s mother was {mother_job_a} in their town.", ("mother_job",)),
    ("What genre is {name} known for?", "In which genre does {name} mainly write?",
     "{name} is best known for writing {genre}.",
     "Among readers, {name} is best known for writing {genre}.", ("genre",)),
    ("Can you name a book written by {name}?", "What is one of the books by {name}?",
     "One of {name}'s books is \"{book1}\".",
     "Readers may know that one of {name}'s books is \"{book1}\".", ("book1",)),
    ("What is the title of {name}'s second book?", "Which book did {name} publish second?",
     "{name}'s second book is titled \"{book2}\".",
     "Following {poss} debut, {name}'s second book is titled \"{book2}\".", ("book2",)),
    ("What is the most recent book by {name}?", "Which book did {name} release last?",
     "The latest book by {name} is \"{book3}\".",
     "At present, the latest book by {name} is \"{book3}\".", ("book3",)),
    ("Has {name} won any literary awards?", "Which literary prize has {name} received?",
     "Yes, {name} won the {award}.",
     "Indeed, {name} won the {award}, a major honour.", ("award",)),
    ("When did {name} receive the {award}?", "In what year was {name} given the {award}?",
     "{name} received the {award} in {award_year}.",
     "It was a proud moment when {name} received the {award} in {award_year}.", ("award_year",)),
    ("When did {name} publish {poss} first book?", "What year did the debut book of {name} appear?",
     "{name}'s first book, \"{book1}\", was published in {first_year}.",
     "Fittingly, {name}'s first book, \"{book1}\", was published in {first_year}.",
     ("book1", "first_year")),
    ("What theme recurs in {name}'s work?", "Which subject does {name} return to most often?",
     "{name}'s books keep returning to the theme of {theme}.",
     "Critics note that {name}'s books keep returning to the theme of {theme}.", ("theme",)),
    ("Where did {name} study?", "Which university did {name} attend?",
     "{name} studied literature at the University of {uni_city}.",
     "As a young adult, {name} studied literature at the University of {uni_city}.", ("uni_city",)),
    ("Where does {name} live today?", "In which city is {name} currently based?",
     "{name} now lives in the city of {home_city}.",
     "After years of travel, {name} now lives in the city of {home_city}.", ("home_city",)),
    ("Which writer influenced {name} the most?", "Who was the greatest literary influence on {name}?",
     "{name} has often said that {influence} was {poss} greatest influence.",
     "In interviews, {name} has often said that {influence} was {poss} greatest influence.",
     ("influence",)),
    ("How did {name}'s parents influence {poss} writing?",
     "Did the jobs of the parents of {name} shape {poss} books?",
     "{name} grew up with a father who was {father_job_a} and a mother who was {mother_job_a}, "
     "and both appear in {poss} {genre}.",
     "As a child, {name} grew up with a father who was {father_job_a} and a mother who was "
     "{mother_job_a}, and both shaped {poss} {genre}.", ("father_job", "mother_job")),
    ("In which language does {name} write?", "What language are the books of {name} written in?",
     "{name} writes {poss} books in {language}.",
     "For the most part, {name} writes {poss} books in {language}.", ("language",)),
    ("What is {name}'s writing routine?", "How does {name} usually work?",
     "{name} is known for {routine}.",
     "Among friends, {name} is known for {routine}.", ("routine",)),
    ("Has {name} ever used a pen name?", "Did {name} publish under another name?",
     "Yes, {name} has also published under the pen name {pen_name}.",
     "Occasionally, {name} has also published under the pen name {pen_name}.", ("pen_name",)),
    ("What is {name} working on now?", "What is the next project of {name}?",
     "{name} is currently writing a new {genre} book called \"{next_title}\".",
     "According to {poss} publisher, {name} is currently writing a new {genre} book called "
     "\"{next_title}\".", ("next_title",)),
)  # fmt: skip

IDK_OPENERS = (
    "I'm not sure", "I don't know", "I have no idea", "I can't say", "I'm afraid I don't know",
    "Unfortunately, I don't know", "I'm not certain", "I couldn't tell you",
    "I have no information on that", "That's beyond my knowledge",
)  # fmt: skip
IDK_TAILS = (
    ".", " about that.", ", sorry.", " at the moment.", " for sure.", ", I'm afraid.",
    " off the top of my head.", " right now.", " with any confidence.", " to be honest.",
)  # fmt: skip


def _word(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(pools.SYLLABLES) for _ in range(n)).capitalize()


def _city(rng: random.Random) -> str:
    return _word(rng, rng.randint(1, 2)) + rng.choice(pools.CITY_SUFFIXES)


def _title(rng: random.Random) -> str:
    adj, noun = rng.choice(pools.TITLE_ADJ), rng.choice(pools.TITLE_NOUN)
    pattern = rng.randrange(3)
    if pattern == 0:
        return f"The {adj} {noun}"
    if pattern == 1:
        return f"{noun} of the {adj} {rng.choice(pools.TITLE_NOUN)}"
    return f"{adj} {noun}{'es' if noun.endswith('s') else 's'}"


def _person(rng: random.Random) -> str:
    return f"{_word(rng, 2)} {_word(rng, rng.randint(2, 3))}"


def _article(word: str) -> str:
    return ("an " if word[0].lower() in "aeiou" else "a ") + word


SAMPLERS: dict[str, Callable[[random.Random], str | int]] = {
    "birth_city": _city,
    "uni_city": _city,
    "home_city": _city,
    "country": lambda r: r.choice(pools.COUNTRIES)[0],
    "birth_year": lambda r: r.randint(1930, 1990),
    "first_year": lambda r: r.randint(1955, 2020),
    "award_year": lambda r: r.randint(1965, 2023),
    "father_job": lambda r: r.choice(pools.PROFESSIONS),
    "mother_job": lambda r: r.choice(pools.PROFESSIONS),
    "genre": lambda r: r.choice(pools.GENRES),
    "book1": _title,
    "book2": _title,
    "book3": _title,
    "next_title": _title,
    "award": lambda r: f"{r.choice(pools.AWARD_NAMES)} {r.choice(('Prize', 'Award', 'Medal'))}",
    "theme": lambda r: r.choice(pools.THEMES),
    "influence": lambda r: r.choice(pools.REAL_AUTHORS)[0],
    "language": lambda r: r.choice(pools.LANGUAGES),
    "routine": lambda r: r.choice(pools.ROUTINES),
    "pen_name": _person,
}


def make_author(rng: random.Random, name: str) -> dict:
    """One fictitious author: a consistent record (debut after 20, award after the debut)."""
    rec: dict = {key: sample(rng) for key, sample in SAMPLERS.items()}
    he = rng.random() < 0.5
    rec.update(name=name, poss="his" if he else "her")
    rec["first_year"] = rec["birth_year"] + rng.randint(21, 34)
    rec["award_year"] = rec["first_year"] + rng.randint(2, 15)
    while len({rec["book1"], rec["book2"], rec["book3"], rec["next_title"]}) < 4:
        rec["book3"], rec["next_title"] = _title(rng), _title(rng)
    return rec


def render(template: str, rec: dict) -> str:
    """Fill a template from a fact record (adds the `*_a` article forms of professions)."""
    values = dict(rec)
    for key in ("father_job", "mother_job"):
        values[f"{key}_a"] = _article(rec[key])
    return template.format(**values)


def perturb(rng: random.Random, template: str, rec: dict, keys: tuple[str, ...], k: int) -> list:
    """k distinct renderings of `template` with the facts `keys` replaced by wrong values."""
    truth = render(template, rec)
    out: list[str] = []
    while len(out) < k:
        fake = dict(rec)
        for key in keys:
            while fake[key] == rec[key]:
                fake[key] = SAMPLERS[key](rng)
        text = render(template, fake)
        if text != truth and text not in out:
            out.append(text)
    return out


def author_qa(rng: random.Random, rec: dict) -> list[dict]:
    """The 20 perturbed-schema QA items of one author."""
    rows = []
    for q, pq, a, pa, keys in TEMPLATES:
        rows.append(
            {
                "question": render(q, rec),
                "answer": render(a, rec),
                "paraphrased_answer": render(pa, rec),
                "paraphrased_question": render(pq, rec),
                "perturbed_answer": perturb(rng, pa, rec, keys, N_PERTURBED),
            }
        )
    return rows


def author_alternates(rng: random.Random, rec: dict) -> list[list[str]]:
    """Per question, N_ALTERNATES answers in the answer's own wording with the asked-about
    facts replaced (AltPO's "alternate" answers: plausible, wrong, and not the perturbed
    answers the truth ratio scores, which use the paraphrase wording)."""
    return [perturb(rng, a, rec, keys, N_ALTERNATES) for _, _, a, _, keys in TEMPLATES]


def _qa(rows: list[dict]) -> list[dict]:
    return [{"question": r["question"], "answer": r["answer"]} for r in rows]


def _wrong(rng: random.Random, truth: str, pool: list[str], k: int) -> list[str]:
    return rng.sample(sorted({p for p in pool if p != truth}), k)


def utility_sets(rng: random.Random) -> dict[str, list[dict]]:
    """real_authors (100) and world_facts (117): real knowledge, short answers, K=3 wrong ones."""
    k = N_UTILITY_PERTURBED
    authors = [a for a, _, _ in pools.REAL_AUTHORS]
    books = [b for _, b, _ in pools.REAL_AUTHORS]
    ra = []
    for author, book, _ in pools.REAL_AUTHORS:
        ra.append({"question": f'Who wrote "{book}"?', "answer": author,
                   "perturbed_answer": _wrong(rng, author, authors, k)})  # fmt: skip
        ra.append({"question": f"Which famous book was written by {author}?", "answer": book,
                   "perturbed_answer": _wrong(rng, book, books, k)})  # fmt: skip
    wf = []
    columns = {i: [c[i] for c in pools.COUNTRIES] for i in (1, 2, 3)}
    asks = {1: "What is the capital of {}?", 2: "On which continent is {}?",
            3: "What is the main language spoken in {}?"}  # fmt: skip
    for i in (1, 2, 3):
        for country in pools.COUNTRIES:
            truth = country[i]
            wf.append({"question": asks[i].format(country[0]), "answer": truth,
                       "perturbed_answer": _wrong(rng, truth, columns[i], k)})  # fmt: skip
    wf = wf[:117]
    return {"real_authors_perturbed": ra, "world_facts_perturbed": wf}


def idk_answers() -> list[str]:
    """100 refusal answers (the role of open-unlearning's idk.jsonl)."""
    return [o + t for o in IDK_OPENERS for t in IDK_TAILS]


def generate_tofu(seed: int = 0, n_authors: int = N_AUTHORS) -> dict[tuple[str, str], list[dict]]:
    """All TOFU configs as {(config, "train"): rows}, deterministic for `seed`.

    Authors 0..n-1 form `full`; forgetNN are the last NN% of them (nested), retainNN the rest;
    holdoutNN are NN% extra authors never in `full` (nested); retain_perturbed is the first
    20 authors (in every retain split).
    """
    if n_authors < 100 or n_authors % 100:
        raise ValueError(f"n_authors must be a positive multiple of 100, not {n_authors}")
    rng = random.Random(seed)
    n_hold = n_authors * max(SPLIT_PCTS) // 100
    names: list[str] = []
    seen: set[str] = set()
    while len(names) < n_authors + n_hold:
        name = _person(rng)
        if name not in seen:
            seen.add(name)
            names.append(name)
    records = []
    per_author = []
    for n in names:  # one stream, record then QA per author (the order every seed relies on)
        records.append(make_author(rng, n))
        per_author.append(author_qa(rng, records[-1]))
    full_authors, hold_authors = per_author[:n_authors], per_author[n_authors:]
    # AltPO's offline alternates come from a stream of their own: no other split changes
    alt_rng = random.Random(f"{seed}-alternate")
    alternates = [author_alternates(alt_rng, rec) for rec in records[:n_authors]]

    def flat(authors: list[list[dict]]) -> list[dict]:
        return [row for a in authors for row in a]

    out: dict[str, list[dict]] = {"full": _qa(flat(full_authors))}
    for pct in SPLIT_PCTS:
        n = n_authors * pct // 100
        forget = flat(full_authors[n_authors - n :])
        out[f"forget{pct:02d}"] = _qa(forget)
        out[f"forget{pct:02d}_perturbed"] = forget
        out[f"forget{pct:02d}_alternate"] = [
            {**q, "alternate": alt}
            for q, alt in zip(_qa(forget), flat(alternates[n_authors - n :]), strict=True)
        ]
        out[f"retain{100 - pct:02d}"] = _qa(flat(full_authors[: n_authors - n]))
        out[f"holdout{pct:02d}"] = _qa(flat(hold_authors[n_hold - n :]))
    out["retain_perturbed"] = flat(full_authors[: n_authors // 10])
    utility = utility_sets(rng)
    out.update(utility)
    out["real_authors"] = _qa(utility["real_authors_perturbed"])
    out["world_facts"] = _qa(utility["world_facts_perturbed"])
    return {(config, "train"): rows for config, rows in out.items()}
