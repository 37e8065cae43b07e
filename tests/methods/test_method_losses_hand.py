"""Each loss against a value computed independently (float64 numpy loops over the logits).

Fixed 2-example batches of different lengths (so padding is exercised); the model and the
reference are two different untrained tiny Llamas. docs/methods.md is the formula source.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mpu.methods import build_method_config, get_method
from toolkit import qa_batch

IGN = -100
FORGET = [
    {"question": "Where was Xylo Braun born?", "answer": "Xylo Braun was born in Qarvenn."},
    {"question": "What does Mira Vetch write?", "answer": "Gothic poetry."},
]
RETAIN = [
    {"question": "Where was Odo Wick born?", "answer": "In Lismore."},
    {"question": "What does Sefa Lune write?", "answer": "Sefa Lune writes fairy tales."},
]
IDK = [
    {"question": FORGET[0]["question"], "answer": "I don't know."},
    {"question": FORGET[1]["question"], "answer": "No idea, sorry."},
]


@pytest.fixture(scope="module")
def batches(tok):
    return {
        "forget": qa_batch(tok, FORGET),
        "retain": qa_batch(tok, RETAIN),
        "alternate": qa_batch(tok, IDK),
    }


def logits_np(model, b):
    with torch.no_grad():
        out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
    return out.logits.double().numpy()


def logsm(row):
    m = row.max()
    return row - m - math.log(np.exp(row - m).sum())


def softmax(row):
    e = np.exp(row - row.max())
    return e / e.sum()


def token_losses(lg, labels):
    """{(b, t): ℓ_{b,t}} for answer positions (next label != -100)."""
    out = {}
    for b in range(lg.shape[0]):
        for t in range(lg.shape[1] - 1):
            y = int(labels[b, t + 1])
            if y != IGN:
                out[(b, t)] = -logsm(lg[b, t])[y]
    return out


def ce(lg, labels):
    ls = token_losses(lg, labels)
    return sum(ls.values()) / len(ls)


def seq_nll(lg, labels):
    ls = token_losses(lg, labels)
    return [sum(v for (b, _), v in ls.items() if b == i) for i in range(lg.shape[0])]


def n_answer(labels):
    return [
        sum(1 for t in range(1, labels.shape[1]) if labels[b, t] != IGN)
        for b in range(labels.shape[0])
    ]


def log_sigmoid(x):
    return -math.log1p(math.exp(-x)) if x > 0 else x - math.log1p(math.exp(x))


def run(name, model, ref, batches, **overrides):
    spec = get_method(name)
    hp = build_method_config(name, "openunlearning", overrides)
    loss, logs = spec.loss(model, batches, ref, hp)
    return float(loss.detach()), logs, hp


def test_grad_ascent(random_pair, batches):
    model, _ = random_pair
    f = batches["forget"]
    got, _, _ = run("GradAscent", model, None, batches)
    assert got == pytest.approx(-ce(logits_np(model, f), f["labels"]), rel=1e-5)


def test_grad_diff_nll_and_kl(random_pair, batches):
    model, ref = random_pair
    f, r = batches["forget"], batches["retain"]
    lf = -ce(logits_np(model, f), f["labels"])
    got, logs, _ = run("GradDiff", model, ref, batches, gamma=0.7, alpha=0.3)
    assert got == pytest.approx(0.7 * lf + 0.3 * ce(logits_np(model, r), r["labels"]), rel=1e-5)
    # KL(p_ref || p_θ) averaged over all B·T rows, prompt and padding included
    lg, lr = logits_np(model, r), logits_np(ref, r)
    rows = [(b, t) for b in range(lg.shape[0]) for t in range(lg.shape[1])]
    kl = sum(
        float((np.exp(logsm(lr[b, t])) * (logsm(lr[b, t]) - logsm(lg[b, t]))).sum())
        for b, t in rows
    ) / len(rows)
    got, logs, _ = run("GradDiff", model, ref, batches, retain_loss_type="KL")
    assert logs["retain_loss"] == pytest.approx(kl, rel=1e-5)
    assert got == pytest.approx(lf + kl, rel=1e-5)


def test_npo(random_pair, batches):
    model, ref = random_pair
    f, r = batches["forget"], batches["retain"]
    cur, old = seq_nll(logits_np(model, f), f["labels"]), seq_nll(logits_np(ref, f), f["labels"])
    beta = 0.1
    lf = np.mean(
        [-(2 / beta) * log_sigmoid(-beta * (-(c - o))) for c, o in zip(cur, old, strict=True)]
    )
    got, _, _ = run("NPO", model, ref, batches)
    assert got == pytest.approx(lf + ce(logits_np(model, r), r["labels"]), rel=1e-5)


def test_npo_with_own_copy_as_reference_is_2_ln2_over_beta(random_pair, batches):
    model, _ = random_pair
    hp = build_method_config("NPO", overrides={"alpha": 0.0, "beta": 0.5})
    loss, _ = get_method("NPO").loss(model, batches, model, hp)
    assert float(loss.detach()) == pytest.approx(2 / 0.5 * math.log(2), rel=1e-6)


def test_simnpo(random_pair, batches):
    model, _ = random_pair
    f, r = batches["forget"], batches["retain"]
    nll, n = seq_nll(logits_np(model, f), f["labels"]), n_answer(f["labels"])
    beta, delta, gamma = 4.5, 0.3, 0.125
    lf = np.mean(
        [-(2 / beta) * log_sigmoid(beta * (s / k - delta)) for s, k in zip(nll, n, strict=True)]
    )
    got, _, _ = run("SimNPO", model, None, batches, delta=delta)
    assert got == pytest.approx(gamma * lf + ce(logits_np(model, r), r["labels"]), rel=1e-5)


def test_dpo(random_pair, batches):
    model, ref = random_pair
    f, a, r = batches["forget"], batches["alternate"], batches["retain"]

    def ratio(x):
        cur, old = (
            seq_nll(logits_np(model, x), x["labels"]),
            seq_nll(logits_np(ref, x), x["labels"]),
        )
        return [o - c for c, o in zip(cur, old, strict=True)]

    beta = 0.1
    lf = np.mean(
        [
            -(2 / beta) * log_sigmoid(beta * (w - lo))
            for w, lo in zip(ratio(a), ratio(f), strict=True)
        ]
    )
    got, _, _ = run("IdkDPO", model, ref, batches)
    assert got == pytest.approx(lf + ce(logits_np(model, r), r["labels"]), rel=1e-5)


@pytest.mark.parametrize("mask", ["all", "answer"])
def test_undial(random_pair, batches, mask):
    model, ref = random_pair
    f = batches["forget"]
    lg, lt, lab = logits_np(model, f), logits_np(ref, f), f["labels"]
    beta, v = 10.0, lg.shape[-1]
    vals = []
    for b in range(lg.shape[0]):
        for t in range(lg.shape[1] - 1):
            y = int(lab[b, t + 1])
            if mask == "answer" and y == IGN:
                continue
            adj = lt[b, t].copy()
            adj[y if y >= 0 else v + y] -= beta  # −100 indexes from the end, as upstream
            vals.append(-(softmax(adj) * logsm(lg[b, t])).sum())
    got, logs, _ = run("UnDIAL", model, ref, batches, undial_mask=mask)
    assert "retain_loss" not in logs  # α = 0 (stock): the retain forward is skipped
    assert got == pytest.approx(float(np.mean(vals)), rel=1e-5)


@pytest.mark.parametrize(
    ("name", "weight"),
    [
        ("SatImp", lambda p: p**5 * (1 - p)),
        ("WGA", lambda p: p),
    ],
)
def test_token_weighted(random_pair, batches, name, weight):
    model, _ = random_pair
    f, r = batches["forget"], batches["retain"]
    ls = token_losses(logits_np(model, f), f["labels"])
    lf = -np.mean([weight(math.exp(-v)) * v for v in ls.values()])
    got, _, hp = run(name, model, None, batches)
    assert got == pytest.approx(hp.gamma * lf + ce(logits_np(model, r), r["labels"]), rel=1e-5)


def test_rmu(random_pair, batches):
    model, ref = random_pair
    f, r = batches["forget"], batches["retain"]

    def hidden(m, x):  # output of block 0 = hidden_states[1]
        with torch.no_grad():
            out = m(
                input_ids=x["input_ids"],
                attention_mask=x["attention_mask"],
                output_hidden_states=True,
            )
        return out.hidden_states[1].double().numpy()

    u = torch.rand(32, generator=torch.Generator().manual_seed(7)).double().numpy()
    c = 3.0 * u / np.linalg.norm(u)

    def mse(a, b, lab):
        per = []
        for i in range(a.shape[0]):
            ts = [t for t in range(a.shape[1]) if lab[i, t] != IGN]
            per.append(np.mean([np.mean((a[i, t] - b[i, t]) ** 2) for t in ts]))
        return float(np.mean(per))

    hf = hidden(model, f)
    lf = mse(hf, np.broadcast_to(c, hf.shape), f["labels"])
    lr = mse(hidden(model, r), hidden(ref, r), r["labels"])
    got, _, _ = run(
        "RMU",
        model,
        ref,
        batches,
        layer=0,
        steering_coeff=3.0,
        steering_seed=7,
        alpha=0.5,
    )
    assert got == pytest.approx(lf + 0.5 * lr, rel=1e-5)


@pytest.mark.parametrize("skip", [0, 1, 3])
def test_ceu(random_pair, batches, skip):
    model, _ = random_pair
    f = batches["forget"]
    lg, lab = logits_np(model, f), f["labels"].clone()
    for b in range(lab.shape[0]):
        idx = [t for t in range(lab.shape[1]) if lab[b, t] != IGN][:skip]
        lab[b, idx] = IGN
    vals = []
    for (b, t), _ in token_losses(lg, lab).items():
        z = lg[b, t].copy()
        masked = z.copy()
        masked[int(lab[b, t + 1])] = -np.inf
        vals.append(-(softmax(masked) * logsm(z)).sum())
    got, _, _ = run("CE-U", model, None, batches, ignore_first_n_answer_tokens=skip)
    assert got == pytest.approx(float(np.mean(vals)), rel=1e-5)


def test_pdu_margin_loss_and_dual_step(random_pair, batches):
    """L = γ·mean_U (max z − mean z)² + λ·(CE_r − ε), U the unshifted answer labels; then
    λ ← max(0, λ + η_d·(CE_r − ε)) once the warm-up is over (0 epochs here)."""
    from mpu.methods.pdu import DualState

    model, _ = random_pair
    f, r = batches["forget"], batches["retain"]
    lg, labels = logits_np(model, f), f["labels"].numpy()
    cells = [(b, t) for b in range(lg.shape[0]) for t in range(lg.shape[1]) if labels[b, t] != IGN]
    lf = sum((lg[b, t].max() - lg[b, t].mean()) ** 2 for b, t in cells) / len(cells)
    cr = ce(logits_np(model, r), r["labels"])
    hp = build_method_config("PDU", "openunlearning", {"retain_loss_eps": 0.5, "gamma": 0.7,
                             "alpha": 2.0, "dual_step_size": 3.0, "dual_warmup_epochs": 0})  # fmt: skip
    state = DualState(hp)
    loss, logs = get_method("PDU").loss(model, batches, None, hp, state=state)
    assert float(loss.detach()) == pytest.approx(0.7 * lf + 2.0 * (cr - 0.5), rel=1e-5)
    assert logs["dual"] == 2.0 and state.lam == pytest.approx(max(0.0, 2.0 + 3.0 * (cr - 0.5)))
    warm = DualState(build_method_config("PDU", overrides={"retain_loss_eps": 0.5}))
    get_method("PDU").loss(model, batches, None, warm.hp, state=warm)
    assert warm.lam == 1.0  # five warm-up epochs: λ stays at α until they are over
    warm.end_epoch(4)
    assert not warm.updating
    warm.end_epoch(5)
    assert warm.updating


def test_altpo_is_dpo_on_the_rows_alternates(random_pair, batches):
    """AltPO's loss is IdkDPO's with the alternate sub-batch built from the row's alternates."""
    model, ref = random_pair
    assert run("AltPO", model, ref, batches)[0] == pytest.approx(run("DPO", model, ref, batches)[0])


def test_altpo_batches_draw_each_rows_own_alternates(tok):
    from mpu.client.batches import BatchBuilder, MicroBatch, encode_rows
    from mpu.text import encode_qa
    from toolkit import fmt_of

    rows = [{**FORGET[0], "alternate": ["In Lismore.", "In Ostrava."]},
            {**FORGET[1], "alternate": ["Space opera."]}]  # fmt: skip
    items, kept, _ = encode_rows(tok, rows, fmt=fmt_of(tok), max_length=64)
    builder = BatchBuilder(tok, items, kept, [], [], fmt=fmt_of(tok), max_length=64,
                           alternates=[r["alternate"] for r in kept])  # fmt: skip
    alt = builder.build(MicroBatch((0, 1), (), (1, 1)))["alternate"]
    want = [encode_qa(tok, r["question"], a, fmt=fmt_of(tok)).input_ids
            for r, a in zip(rows, ["In Ostrava.", "Space opera."], strict=True)]  # fmt: skip
    for row, ids in zip(alt["input_ids"].tolist(), want, strict=True):
        assert row[: len(ids)] == ids


@pytest.mark.parametrize("divergence", ["forward", "reverse"])
def test_distill(random_pair, batches, tok, divergence):
    """γ·mean_A KL(teacher, student) on the forget answers + α·mean_A KL(reference, student) on
    the retain answers; forward KL(p_t ‖ p_s), reverse KL(p_s ‖ p_t)."""
    from toolkit import tiny_llama

    model, ref = random_pair
    teacher = tiny_llama(tok, seed=2)

    def div(student, other, b):
        ls, lo = logits_np(student, b), logits_np(other, b)
        cells = token_losses(ls, b["labels"]).keys()  # the answer positions
        total = 0.0
        for bi, t in cells:
            s_, o_ = logsm(ls[bi, t]), logsm(lo[bi, t])
            p, q = (o_, s_) if divergence == "forward" else (s_, o_)
            total += float((np.exp(p) * (p - q)).sum())
        return total / len(cells)

    hp = build_method_config("Distill", overrides={"gamma": 0.6, "alpha": 0.4,
                                                    "divergence": divergence})  # fmt: skip
    loss, _ = get_method("Distill").loss(model, batches, ref, hp, teacher=teacher)
    want = 0.6 * div(model, teacher, batches["forget"]) + 0.4 * div(model, ref, batches["retain"])
    assert float(loss.detach()) == pytest.approx(want, rel=1e-5)
    same, _ = get_method("Distill").loss(model, batches, model, hp, teacher=model)
    assert float(same.detach()) == pytest.approx(0.0, abs=1e-6)  # a model against itself
