"""Where a forget set lives in a model: per-parameter importance from first- or second-order
information that never forms a matrix of second derivatives (issue 27, docs/methods.md
"Localized updates").

Three estimators of how much each parameter carries a set's answers, for the mean answer loss
L = (1/N) Σ_i ℓ_i (ℓ_i: item i's token-mean answer NLL, the loss the methods start from):

- `grad`: |∇L|, the cheap baseline (one backward pass over the set);
- `fisher`: the diagonal empirical Fisher F = (1/N) Σ_i (∇ℓ_i)², one backward pass per item
  (per-item gradients do not survive a batched backward, and HF's masks defeat `vmap`);
- `hutchinson`: the Hessian diagonal by Hutchinson's estimator, diag H ≈ (1/K) Σ_k z_k ⊙ H z_k
  with Rademacher probes z_k; each H z is one forward-over-reverse product (`torch.func.jvp`
  of `torch.func.grad`), so K probes cost K passes over the set. The importance is |diag H|.

`relative` turns a forget set's importance into a score against the retain set's, so that a
parameter every answer needs (the embeddings of common tokens, a final norm) does not rank as
"where the forget set lives".
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

SCORES = ("fisher", "hutchinson", "grad")
# the retain importance's mean, times this, is added to the denominator of `relative`: a
# parameter the retain set leaves untouched would otherwise score by noise over zero
RETAIN_DAMPING = 0.1


def _math_attention():
    """SDPA through its plain-maths kernel: the fused CPU/CUDA kernels have neither forward-mode
    derivatives nor a derivative of their backward, and Hessian products need one of the two."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.MATH)


def item_batches(items: Sequence, tokenizer, batch_size: int) -> Iterator[dict]:
    """Padded batches of encoded items (`mpu.text.Encoded`)."""
    from mpu.text import collate, pad_id_of

    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        batch = collate(
            [e.input_ids for e in chunk],
            pad_id=pad_id_of(tokenizer),
            labels=[e.labels for e in chunk],
            mask_mode="padding",
        )
        yield batch


def item_losses(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """ℓ_i for each item of the batch: the token mean of its answer NLL ([B])."""
    from mpu.methods.common import answer_token_nll, item_means

    return item_means(*answer_token_nll(model, batch))


def _zeros(named: Sequence[tuple[str, torch.nn.Parameter]]) -> dict[str, torch.Tensor]:
    return {n: torch.zeros_like(p, dtype=torch.float32) for n, p in named}


def _gradients(loss: torch.Tensor, named) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, ∂loss/∂parameter) for the parameters the loss reaches."""
    grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
    for (n, _), g in zip(named, grads, strict=True):
        if g is not None:
            yield n, g.float()


def gradient_magnitude(model, named, items, tokenizer, batch_size: int = 8) -> dict:
    """|∇L| per parameter, L the mean item loss over `items`."""
    total = _zeros(named)
    for batch in item_batches(items, tokenizer, batch_size):
        for n, g in _gradients(item_losses(model, batch).sum() / len(items), named):
            total[n] += g
    return {n: t.abs() for n, t in total.items()}


def fisher_diagonal(model, named, items, tokenizer) -> dict:
    """(1/N) Σ_i (∇ℓ_i)² per parameter: one item per backward pass, so no padding and no item
    sees another's gradient."""
    total = _zeros(named)
    for batch in item_batches(items, tokenizer, 1):
        for n, g in _gradients(item_losses(model, batch).sum(), named):
            total[n] += g.square()
    return {n: t / len(items) for n, t in total.items()}


def hessian_diagonal(
    model, named, items, tokenizer, *, probes: int, seed: int = 0, batch_size: int = 8
) -> dict:
    """Hutchinson's signed estimate of diag ∇²L with `probes` Rademacher probes (seeded)."""
    from torch.func import functional_call, grad, jvp

    if probes < 1:
        raise ValueError(f"probes={probes}: Hutchinson's estimator needs at least one probe")
    names = [n for n, _ in named]
    fixed = {n: p.detach() for n, p in model.named_parameters() if n not in set(names)}
    gen = torch.Generator().manual_seed(seed)
    total = _zeros(named)
    for _ in range(probes):
        z = {n: (torch.randint(0, 2, p.shape, generator=gen) * 2 - 1).to(p) for n, p in named}
        hz = _zeros(named)
        for batch in item_batches(items, tokenizer, batch_size):

            def loss(trainable, batch=batch):
                return item_losses_functional(functional_call, model, {**fixed, **trainable},
                                              batch).sum() / len(items)  # fmt: skip

            with _math_attention():
                _, hv = jvp(grad(loss), ({n: p.detach() for n, p in named},), (z,))
            for n in names:
                hz[n] += hv[n].float()
        for n in names:
            total[n] += z[n].float() * hz[n]
    return {n: t / probes for n, t in total.items()}


def item_losses_functional(call, model, params: dict, batch: dict) -> torch.Tensor:
    """`item_losses` of `model` with its parameters replaced by `params` (torch.func)."""
    from mpu.methods.common import item_means, model_inputs, token_nll

    device = next(iter(params.values())).device
    inputs = {k: v.to(device) for k, v in model_inputs(batch).items()}
    logits = call(model, params, (), inputs).logits.float()
    return item_means(*token_nll(logits, batch["labels"]))


def importance(
    model, named, items, tokenizer, score: str, *, probes: int = 8, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Non-negative per-parameter importance of `items` under `score` (one of SCORES)."""
    if score not in SCORES:
        raise ValueError(f"score={score!r}: expected one of {', '.join(SCORES)}")
    if not items:
        raise ValueError("importance of an empty set")
    was = model.training
    model.eval()  # dropout off: the estimate is of the model the client starts from
    try:
        if score == "grad":
            return gradient_magnitude(model, named, items, tokenizer)
        if score == "fisher":
            return fisher_diagonal(model, named, items, tokenizer)
        est = hessian_diagonal(model, named, items, tokenizer, probes=probes, seed=seed)
        return {n: t.abs() for n, t in est.items()}
    finally:
        model.train(was)


def relative(forget: dict, retain: dict | None, damping: float = RETAIN_DAMPING) -> dict:
    """The forget set's importance against the retain set's: I_f / (I_r + damping·mean(I_r));
    I_f itself when there is no retain set."""
    if retain is None:
        return dict(forget)
    count = sum(t.numel() for t in retain.values())
    floor = damping * sum(float(t.sum()) for t in retain.values()) / max(count, 1)
    floor = max(floor, torch.finfo(torch.float32).tiny)
    return {n: forget[n] / (retain[n] + floor) for n in forget}
