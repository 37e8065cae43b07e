"""The adapter table: one `ArchSpec` per supported model family (PEFT-style constants).

Adding a family means adding a row here and a tiny-config case to `tests/arch`; the
function-preservation test then proves the row right. Families not listed are refused.
"""

from __future__ import annotations

from mpu.arch.base import ArchSpec, Role

_DECODER = "model.layers"

_LLAMA_ROLES: dict[str, Role] = {
    "self_attn.q_proj.weight": Role.Q,
    "self_attn.q_proj.bias": Role.Q,
    "self_attn.k_proj.weight": Role.K,
    "self_attn.k_proj.bias": Role.K,
    "self_attn.v_proj.weight": Role.V,
    "self_attn.v_proj.bias": Role.V,
    "self_attn.o_proj.weight": Role.O,
    "self_attn.o_proj.bias": Role.BLOCK_OTHER,
    "mlp.gate_proj.weight": Role.FFN_IN,
    "mlp.gate_proj.bias": Role.FFN_IN,
    "mlp.up_proj.weight": Role.FFN_IN,
    "mlp.up_proj.bias": Role.FFN_IN,
    "mlp.down_proj.weight": Role.FFN_OUT,
    "mlp.down_proj.bias": Role.BLOCK_OTHER,
    "input_layernorm.weight": Role.BLOCK_OTHER,
    "post_attention_layernorm.weight": Role.BLOCK_OTHER,
}
_QK_NORM = {"self_attn.q_norm.weight": Role.Q_NORM, "self_attn.k_norm.weight": Role.K_NORM}
_SANDWICH = {
    "pre_feedforward_layernorm.weight": Role.BLOCK_OTHER,
    "post_feedforward_layernorm.weight": Role.BLOCK_OTHER,
}

FAMILIES: tuple[ArchSpec, ...] = (
    ArchSpec(
        "llama",
        ("llama", "mistral"),
        _DECODER,
        _LLAMA_ROLES,
        notes="Llama 2/3.x, Mistral, SmolLM2: separate q/k/v/o, GQA, full rotate_half RoPE",
    ),
    ArchSpec(
        "qwen2",
        ("qwen2",),
        _DECODER,
        _LLAMA_ROLES,
        notes="Qwen2/2.5: q/k/v biases rotated with their rows",
    ),
    ArchSpec(
        "qwen3",
        ("qwen3",),
        _DECODER,
        {**_LLAMA_ROLES, **_QK_NORM},
        qk_norm=True,
        notes="Qwen3: per-head q/k RMSNorm shared by heads → quarter-turn angles only",
    ),
    ArchSpec(
        "gemma",
        ("gemma",),
        _DECODER,
        _LLAMA_ROLES,
        notes="Gemma: head_dim from config; (1+w) RMSNorm untouched",
    ),
    ArchSpec(
        "gemma2",
        ("gemma2",),
        _DECODER,
        {**_LLAMA_ROLES, **_SANDWICH},
        notes="Gemma2: sandwich norms and soft-capping untouched (scores preserved)",
    ),
    ArchSpec(
        "gemma3",
        ("gemma3_text",),
        _DECODER,
        {**_LLAMA_ROLES, **_SANDWICH, **_QK_NORM},
        qk_norm=True,
        notes="Gemma3 text: q/k-norm → quarter-turn angles only",
    ),
    ArchSpec(
        "phi3",
        ("phi3",),
        _DECODER,
        {
            "self_attn.qkv_proj.weight": Role.QKV,
            "self_attn.o_proj.weight": Role.O,
            "mlp.gate_up_proj.weight": Role.FFN_IN_FUSED,
            "mlp.down_proj.weight": Role.FFN_OUT,
            "input_layernorm.weight": Role.BLOCK_OTHER,
            "post_attention_layernorm.weight": Role.BLOCK_OTHER,
        },
        notes="Phi-3/3.5/4-mini: fused qkv and gate_up; partial rotary honoured",
    ),
    ArchSpec(
        "gpt_neox",
        ("gpt_neox",),
        "gpt_neox.layers",
        {
            "attention.query_key_value.weight": Role.QKV_PER_HEAD,
            "attention.query_key_value.bias": Role.QKV_PER_HEAD,
            "attention.dense.weight": Role.O,
            "attention.dense.bias": Role.BLOCK_OTHER,
            "mlp.dense_h_to_4h.weight": Role.FFN_IN,
            "mlp.dense_h_to_4h.bias": Role.FFN_IN,
            "mlp.dense_4h_to_h.weight": Role.FFN_OUT,
            "mlp.dense_4h_to_h.bias": Role.BLOCK_OTHER,
            "input_layernorm.weight": Role.BLOCK_OTHER,
            "input_layernorm.bias": Role.BLOCK_OTHER,
            "post_attention_layernorm.weight": Role.BLOCK_OTHER,
            "post_attention_layernorm.bias": Role.BLOCK_OTHER,
        },
        head_dim_from_config=False,
        outside_pattern=r"^(gpt_neox\.embed_in\.weight|gpt_neox\.final_layer_norm\.(weight|bias)|lm_head\.weight|embed_out\.weight)$",
        tied_alias=("embed_out.weight", "gpt_neox.embed_in.weight"),
        stored_names={"lm_head.weight": "embed_out.weight"},  # transformers saves the legacy name
        notes="GPT-NeoX/Pythia: fused per-head qkv with bias, partial rotary, LayerNorm biases",
    ),
)

_BY_TYPE = {t: spec for spec in FAMILIES for t in spec.model_types}


def spec_for(model_type: str, where: str = "model") -> ArchSpec:
    """The adapter for a `config.model_type`, or an error listing the supported ones."""
    from mpu.errors import UnsupportedArchitectureError

    if model_type not in _BY_TYPE:
        raise UnsupportedArchitectureError(
            f"{where}: unsupported architecture {model_type!r}; supported: {', '.join(sorted(_BY_TYPE))}"
        )
    return _BY_TYPE[model_type]


# families whose causal-LM forward is exactly `head(final hidden states)`: no soft-capping or
# logit scaling after the head (Gemma 2/3 cap their logits, so they are not here)
PLAIN_HEAD_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "phi3", "gemma", "gpt_neox"})


def plain_head(model) -> bool:
    """Whether `model`'s logits are its output embedding applied to its decoder's last hidden
    states, so a caller may run the two halves itself and apply the head to chosen positions
    only (evaluation scoring, answer-only training losses)."""
    return getattr(getattr(model, "config", None), "model_type", None) in PLAIN_HEAD_TYPES
