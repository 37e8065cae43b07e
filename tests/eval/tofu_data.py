"""A hand-made TOFU-shaped data set (docs/metrics.md fields), small enough for second-long tests."""

from __future__ import annotations

import random

from toolkit import WORDS


def _sent(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def tofu_rows(n: int = 6, k: int = 3, seed: int = 0) -> dict[str, list[dict]]:
    rng = random.Random(seed)

    def perturbed(m: int, para: bool = True) -> list[dict]:
        rows = []
        for _ in range(m):
            row = {
                "question": _sent(rng, 5),
                "answer": _sent(rng, rng.randint(3, 8)),
                "perturbed_answer": [_sent(rng, rng.randint(3, 8)) for _ in range(k)],
            }
            if para:
                row["paraphrased_answer"] = _sent(rng, rng.randint(3, 8))
                row["paraphrased_question"] = _sent(rng, 5)
            rows.append(row)
        return rows

    return {
        "forget10_perturbed": perturbed(n),
        "retain_perturbed": perturbed(n),
        "real_authors_perturbed": perturbed(4, para=False),
        "world_facts_perturbed": perturbed(4, para=False),
        "holdout10": [{"question": _sent(rng, 5), "answer": _sent(rng, 6)} for _ in range(n)],
    }
