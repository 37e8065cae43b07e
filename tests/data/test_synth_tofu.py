"""Synthetic TOFU: every split and field the metrics need, TOFU's sizes, disjointness, determinism."""

from __future__ import annotations

import re

import pytest

from mpu.data.synth_tofu import N_PERTURBED, generate_tofu, idk_answers
from mpu.io.datasets import schema_for


@pytest.fixture(scope="module")
def tofu() -> dict[str, list[dict]]:
    return {config: rows for (config, _), rows in generate_tofu(seed=0).items()}


SIZES = {
    "full": 4000,
    "forget01": 40, "forget05": 200, "forget10": 400,
    "retain99": 3960, "retain95": 3800, "retain90": 3600,
    "holdout01": 40, "holdout05": 200, "holdout10": 400,
    "forget01_perturbed": 40, "forget05_perturbed": 200, "forget10_perturbed": 400,
    "forget01_alternate": 40, "forget05_alternate": 200, "forget10_alternate": 400,
    "retain_perturbed": 400,
    "real_authors_perturbed": 100, "world_facts_perturbed": 117,
    "real_authors": 100, "world_facts": 117,
}  # fmt: skip


def _pairs(rows: list[dict]) -> set[tuple[str, str]]:
    return {(r["question"], r["answer"]) for r in rows}


def _authors(rows: list[dict]) -> list[str]:
    # each author's 20 QA open with "Where was {name} born?"
    return [
        m.group(1) for r in rows if (m := re.fullmatch(r"Where was (.+) born\?", r["question"]))
    ]


def test_sizes_and_schema(tofu):
    assert {c: len(r) for c, r in tofu.items()} == SIZES
    for config, rows in tofu.items():
        fields = schema_for(config, "train")
        assert fields is not None, config
        for row in rows:
            assert set(row) == set(fields), config
            for name, typ in fields.items():
                assert isinstance(row[name], typ), (config, name)
            if "perturbed_answer" in row:
                k = N_PERTURBED if config.startswith(("forget", "retain")) else 3
                assert len(row["perturbed_answer"]) == k
                assert all(isinstance(a, str) and a for a in row["perturbed_answer"])


def test_splits_partition_full_and_nest(tofu):
    full = _pairs(tofu["full"])
    assert len(full) == 4000  # no duplicate QA
    for pct in ("01", "05", "10"):
        forget, retain = _pairs(tofu[f"forget{pct}"]), _pairs(tofu[f"retain{100 - int(pct)}"])
        assert forget.isdisjoint(retain) and forget | retain == full
        assert _pairs(tofu[f"forget{pct}_perturbed"]) == forget
        assert _pairs(tofu[f"holdout{pct}"]).isdisjoint(full)
        assert len(tofu[f"forget{pct}"]) % 20 == 0
    assert _pairs(tofu["forget01"]) < _pairs(tofu["forget05"]) < _pairs(tofu["forget10"])
    assert _pairs(tofu["retain_perturbed"]) <= _pairs(tofu["retain99"]) & _pairs(tofu["retain90"])


def test_forget_and_holdout_are_whole_authors_disjoint(tofu):
    authors = {k: set(_authors(tofu[k])) for k in tofu if "_" not in k}
    for k, names in authors.items():
        if not k.startswith(("real", "world")):
            assert len(tofu[k]) == 20 * len(names), k  # whole authors only
            assert all(any(n in r["question"] for n in names) for r in tofu[k]), k
    assert len(authors["full"]) == 200
    assert len(authors["forget10"]) == 20 and len(authors["holdout10"]) == 20
    assert authors["forget10"].isdisjoint(authors["retain90"])
    assert authors["holdout10"].isdisjoint(authors["full"])


def test_perturbed_answers_are_wrong_but_same_style(tofu):
    for row in tofu["forget10_perturbed"] + tofu["retain_perturbed"]:
        para, wrong = row["paraphrased_answer"], row["perturbed_answer"]
        assert para not in wrong and len(set(wrong)) == len(wrong)
        assert row["paraphrased_question"] != row["question"]
        for w in wrong:  # same wording, different facts: a shared prefix or suffix
            assert w[:12] == para[:12] or w[-12:] == para[-12:]
            assert 0.5 < len(w) / len(para) < 2.0
    for row in tofu["world_facts_perturbed"] + tofu["real_authors_perturbed"]:
        assert row["answer"] not in row["perturbed_answer"]


def test_alternates_are_other_facts_in_the_answers_wording_and_not_the_scored_ones(tofu):
    """AltPO's alternates: the forget questions in order, N_ALTERNATES wrong answers each in
    the answer's wording, none of them a perturbed answer the truth ratio scores."""
    from mpu.data.synth_tofu import N_ALTERNATES

    for pct in ("01", "05", "10"):
        alt, pert = tofu[f"forget{pct}_alternate"], tofu[f"forget{pct}_perturbed"]
        assert [(r["question"], r["answer"]) for r in alt] == [
            (r["question"], r["answer"]) for r in tofu[f"forget{pct}"]
        ]
        for a, p in zip(alt, pert, strict=True):
            wrong = a["alternate"]
            assert len(set(wrong)) == N_ALTERNATES and a["answer"] not in wrong
            assert not set(wrong) & set(p["perturbed_answer"])
            assert all(w[:12] == a["answer"][:12] or w[-12:] == a["answer"][-12:] for w in wrong)


def test_facts_are_consistent_within_an_author(tofu):
    name = _authors(tofu["full"])[0]
    rows = [r for r in tofu["full"] if name in r["question"]]
    assert len(rows) == 20
    text = " ".join(r["answer"] for r in rows)
    born = int(re.search(r"born in the year (\d{4})", text).group(1))
    debut = int(re.search(r"was published in (\d{4})", text).group(1))
    book = re.search(r'One of .* books is "([^"]+)"', text).group(1)
    assert debut - born >= 21
    assert f'first book, "{book}"' in text  # the first book is one of the named books


def test_facts_vary_across_authors(tofu):
    born = [r["answer"] for r in tofu["full"] if "born in the year" in r["answer"]]
    cities = {
        r["answer"].split(" born in ")[1]
        for r in tofu["full"]
        if " was born in " in r["answer"] and "year" not in r["answer"]
    }
    assert len({b[-5:] for b in born}) > 40  # many distinct birth years
    assert len(cities) > 150  # birthplaces nearly unique per author


def test_deterministic_for_a_seed():
    assert generate_tofu(seed=3) == generate_tofu(seed=3)
    assert generate_tofu(seed=3) != generate_tofu(seed=4)


def test_idk_answers():
    idk = idk_answers()
    assert len(idk) == 100 and len(set(idk)) == 100
    assert all(a == a.strip() and a for a in idk)
