"""The demo's verdict: one sentence per setting, its numbers and its conclusion computed from
the runs it is given (issue 15, must-show 5)."""

import pytest

from mpu.eval.findings import verdicts


def _runs(clean, noised, mpu, target=0.9, kappa=0.1):
    """Runs rows as report.json holds them; each list is one forget probability per seed."""
    rows = [{"method": "", "variant": "target", "summary": {"forget_Q_A_Prob": target}}]
    for variant, values in (("clean", clean), ("noised", noised), ("mpu", mpu)):
        for v in values:
            rows.append({"method": "NPO", "variant": variant, "m": 2 if variant == "mpu" else 1,
                         "kappa": None if variant == "clean" else kappa,
                         "summary": {"forget_Q_A_Prob": v}})  # fmt: skip
    return rows


def test_verdict_numbers_come_from_the_runs():
    (sentence,) = verdicts(_runs([0.3], [0.7], [0.31]))
    # shares of Clean's drop (0.9 → 0.3): MPU (0.9 − 0.31)/0.6, Noised (0.9 − 0.7)/0.6
    assert sentence.startswith(
        f"NPO at κ = 0.1, m = 2: MPU recovered {100 * 0.59 / 0.6:.0f}% of Clean's forgetting "
        f"where one noisy copy recovered {100 * 0.2 / 0.6:.0f}%"
    )
    assert "Clean 0.300" in sentence
    assert sentence.endswith("MPU kept Clean's forgetting where one noisy copy did not.")


@pytest.mark.parametrize(
    ("noised", "mpu", "conclusion"),
    [
        ([0.32], [0.31], "one noisy copy is already as good as Clean"),
        ([0.8], [0.6], "MPU came closer to Clean than one noisy copy but did not match it"),
        ([0.5], [0.7], "MPU did not match Clean at this noise and was no closer to it"),
        # over-forgetting is a departure too: Noised at 150% of Clean's drop, MPU at 120%
        ([0.0], [0.18], "MPU came closer to Clean than one noisy copy"),
    ],
)
def test_verdict_conclusion_follows_the_numbers(noised, mpu, conclusion):
    (sentence,) = verdicts(_runs([0.3], noised, mpu))
    assert conclusion in sentence


def test_seed_spread_widens_what_counts_as_matching_clean():
    # MPU at 90% ± 10 over three seeds: within twice its spread of Clean, so it matches
    (sentence,) = verdicts(_runs([0.3, 0.3, 0.3], [0.7, 0.7, 0.7], [0.30, 0.36, 0.42]))
    assert "MPU recovered 90% ± 10 of Clean's forgetting" in sentence
    assert "(3 seeds)" in sentence and "MPU kept Clean's forgetting" in sentence


def test_the_verdict_names_the_noise_lines_when_there_are_several():
    rows = _runs([0.3], [0.7], [0.31])
    for r in rows:
        if r["variant"] == "mpu":
            r["m"], r["lines"] = 4, 2
    (sentence,) = verdicts(rows)
    assert sentence.startswith("NPO at κ = 0.1, m = 4 on 2 noise lines: MPU recovered")
