"""Synthetic MUSE and WMDP: schema, sizes, nesting of scal/sust, answerability."""

from __future__ import annotations

from mpu.data.synth_corpora import generate_muse, generate_wmdp
from mpu.io.datasets import schema_for


def _check_schema(splits):
    for (config, split), rows in splits.items():
        fields = schema_for(config, split)
        assert fields is not None, (config, split)
        assert rows, (config, split)
        for row in rows:
            assert set(row) == set(fields), (config, split)
            for name, typ in fields.items():
                assert isinstance(row[name], typ)


def test_muse_sizes_nesting_and_schema():
    muse = generate_muse(seed=0)
    _check_schema(muse)
    sizes = {f"{c}/{s}": len(r) for (c, s), r in muse.items()}
    assert sizes["raw/forget"] == 889 and sizes["raw/retain1"] == 1777
    assert sizes["raw/retain2"] == 1778 and sizes["raw/holdout"] == 3043
    assert [sizes[f"scal/forget_{k}"] for k in range(1, 5)] == [889, 1778, 2667, 3554]
    assert [sizes[f"sust/forget_{k}"] for k in range(1, 5)] == [889, 889, 889, 887]
    assert sizes["knowmem/forget_qa"] == 100 and sizes["knowmem/forget_qa_icl"] == 10
    assert sizes["verbmem/forget"] == 100 and sizes["privleak/holdout"] == 100
    text = {k: [r["text"] for r in v] for k, v in muse.items() if "text" in v[0]}
    assert text[("scal", "forget_1")] == text[("raw", "forget")] == text[("sust", "forget_1")]
    union = [t for k in range(1, 5) for t in text[("sust", f"forget_{k}")]]
    assert union == text[("scal", "forget_4")]
    forget, holdout = set(text[("raw", "forget")]), set(text[("raw", "holdout")])
    assert forget.isdisjoint(holdout) and forget.isdisjoint(text[("raw", "retain1")])
    assert set(text[("privleak", "forget")]) <= forget
    assert set(text[("privleak", "holdout")]) <= holdout
    for v in muse[("verbmem", "forget")]:  # prefix + continuation is a forget article
        assert v["prompt"] + " " + v["gt"] in forget
    for qa in muse[("knowmem", "forget_qa")]:  # answerable from the forget corpus only
        assert any(qa["answer"] in t for t in forget)


def test_muse_scaled_down_and_deterministic():
    small = generate_muse(seed=1, scale=0.05)
    assert len(small[("raw", "forget")]) == 44
    assert small == generate_muse(seed=1, scale=0.05)


def test_wmdp_schema_and_answerability():
    wmdp = generate_wmdp(seed=0)
    _check_schema(wmdp)
    qs = wmdp[("wmdp-bio", "test")]
    assert len(qs) == 1273
    corpus = " ".join(r["text"] for r in wmdp[("bio-forget-corpus", "train")])
    retain = " ".join(r["text"] for r in wmdp[("bio-retain-corpus", "train")])
    for q in qs:
        assert len(q["choices"]) == 4 and len(set(q["choices"])) == 4
        assert 0 <= q["answer"] <= 3
        assert q["choices"][q["answer"]] in corpus
    agent = qs[0]["question"].split(" of ")[1].split(" was")[0]
    assert agent in corpus and agent not in retain
    answers = [q["answer"] for q in qs]
    assert all(answers.count(a) > 200 for a in range(4))  # not a constant letter
