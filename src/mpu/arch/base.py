"""What every tensor of a decoder block is, and the block geometry, per model family.

This is the one place that knows tensor names (PEFT's per-architecture table, LitGPT's
derived geometry). A `Layout` classifies every parameter of a checkpoint into a `Role` that
tells `mpu.protocol.reparam` which function-preserving map applies to it; the expected
parameter set comes from instantiating the architecture on the meta device, so a missing,
unexpected or mis-shaped tensor is an error naming it (docs/protocol.md §10 F4/B15/B16), never a skip.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field

import torch

from mpu.errors import CheckpointError, UnsupportedArchitectureError


class Role(enum.Enum):
    """How the reparameterization treats a tensor (rows = dim 0 of a [out, in] weight or bias)."""

    Q = "q"  # rows grouped by query head: A_{π(i)}ᵀ per head
    K = "k"  # rows grouped by KV head: A_jᵀ
    V = "v"  # rows grouped by KV head: C_jᵀ
    O = "o"  # noqa: E741 - columns grouped by query head: · C_{π(i)}
    QKV = "qkv"  # fused rows [Q | K | V] (Phi-3)
    QKV_PER_HEAD = "qkv_per_head"  # fused rows [head, (q|k|v), d_h] (GPT-NeoX)
    FFN_IN = "ffn_in"  # rows permuted by π_f (gate/up/fc1 weight and bias)
    FFN_IN_FUSED = "ffn_in_fused"  # rows [gate | up], both halves permuted by π_f (Phi-3)
    FFN_OUT = "ffn_out"  # columns permuted by π_f (down/fc2 weight)
    Q_NORM = "q_norm"  # per-head q RMSNorm gain shared by heads: swapped on quarter-turn planes
    K_NORM = "k_norm"
    BLOCK_OTHER = "block_other"  # in-block, left unchanged by T (norms, output biases): noised
    OUTSIDE = "outside"  # embeddings, final norm, lm_head: not in any block

    @property
    def reparameterized(self) -> bool:
        return self not in (Role.BLOCK_OTHER, Role.OUTSIDE)


@dataclass(frozen=True)
class Geometry:
    """Attention/MLP geometry of a decoder, derived once from the config and checked on shapes."""

    n_layers: int
    hidden: int
    n_q_heads: int
    n_kv_heads: int
    head_dim: int
    rotary_dim: int  # leading channels of a head that RoPE rotates (0: no RoPE)
    d_ff: int
    qk_norm: bool

    @property
    def group(self) -> int:
        return self.n_q_heads // self.n_kv_heads

    def kv_of_query_heads(self) -> torch.Tensor:
        """π(i) = ⌊i / g⌋: the KV head each query head reads (HF `repeat_kv`)."""
        return torch.arange(self.n_q_heads) // self.group


@dataclass(frozen=True)
class TensorInfo:
    name: str
    role: Role
    layer: int | None  # None for OUTSIDE tensors


@dataclass(frozen=True)
class ArchSpec:
    """One model family: block prefix, the role of each in-block parameter suffix, q/k-norm."""

    family: str
    model_types: tuple[str, ...]
    block_prefix: str  # module path of the decoder blocks, e.g. "model.layers"
    roles: dict[str, Role]
    qk_norm: bool = False
    head_dim_from_config: bool = True  # GPT-NeoX ignores config.head_dim
    notes: str = ""
    outside_pattern: str = (
        r"^(model\.embed_tokens\.weight|model\.norm\.(weight|bias)|lm_head\.weight)$"
    )
    tied_alias: tuple[str, str] = ("lm_head.weight", "model.embed_tokens.weight")
    stored_names: dict[str, str] = field(
        default_factory=dict
    )  # parameter name -> legacy name on disk

    @property
    def block_pattern(self) -> str:
        """Regex matching a block tensor's name; group 1 is the layer index."""
        return rf"^{re.escape(self.block_prefix)}\.(\d+)\."

    def block_module(self, layer: int) -> str:
        """Module path of decoder block `layer` (its output is the residual stream after it)."""
        return f"{self.block_prefix}.{layer}"

    @property
    def output_embedding(self) -> str:
        """Name of the LM head weight (the alias of the input embedding when tied)."""
        return self.tied_alias[0]


def _rotary_dim(config, head_dim: int) -> int:
    rope = getattr(config, "rope_parameters", None) or {}
    if rope and all(isinstance(v, dict) for v in rope.values()):  # Gemma3: per attention type
        factors = {v.get("partial_rotary_factor", 1.0) for v in rope.values()}
        if len(factors) != 1:
            raise UnsupportedArchitectureError(
                f"{config.model_type}: different partial rotary factors per attention type {factors}"
            )
        factor = factors.pop()
    else:
        factor = rope.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", 1.0))
    factor = 1.0 if factor is None else float(factor)
    rot = int(head_dim * factor)
    if rot % 2:
        raise UnsupportedArchitectureError(f"{config.model_type}: odd rotary dimension {rot}")
    return rot


def geometry_of(config, spec: ArchSpec) -> Geometry:
    """Derive the geometry from a transformers config; no silent defaults (B15)."""

    def need(attr: str) -> int:
        value = getattr(config, attr, None)
        if value is None:
            raise UnsupportedArchitectureError(f"{config.model_type}: config has no {attr!r}")
        return int(value)

    hidden = need("hidden_size")
    n_q = need("num_attention_heads")
    n_kv = getattr(config, "num_key_value_heads", None) or n_q
    head_dim = getattr(config, "head_dim", None) if spec.head_dim_from_config else None
    head_dim = int(head_dim) if head_dim else hidden // n_q
    if n_q % n_kv:
        raise UnsupportedArchitectureError(
            f"{config.model_type}: {n_q} query heads not divisible by {n_kv} KV heads"
        )
    return Geometry(
        n_layers=need("num_hidden_layers"),
        hidden=hidden,
        n_q_heads=n_q,
        n_kv_heads=int(n_kv),
        head_dim=head_dim,
        rotary_dim=_rotary_dim(config, head_dim),
        d_ff=need("intermediate_size"),
        qk_norm=spec.qk_norm,
    )


@dataclass
class Layout:
    """A checkpoint's parameters classified by role, with the geometry they were checked against."""

    spec: ArchSpec
    geometry: Geometry
    tensors: dict[str, TensorInfo]  # every parameter in the checkpoint, file order
    tied: dict[str, str]  # alias name -> canonical name, both stored in the checkpoint
    blocks: dict[int, list[str]]

    def block_of(self, name: str) -> int | None:
        return self.tensors[name].layer

    def role(self, name: str) -> Role:
        return self.tensors[name].role

    def to_json(self) -> dict:
        """A plain-JSON record of the classification (cached in a server's state, so later
        commands need neither transformers nor a meta-device model)."""
        return {
            "family": self.spec.family,
            "geometry": {f: getattr(self.geometry, f) for f in self.geometry.__dataclass_fields__},
            "tensors": {n: [i.role.value, i.layer] for n, i in self.tensors.items()},
            "tied": dict(self.tied),
        }

    @classmethod
    def from_json(cls, obj: dict) -> Layout:
        from mpu.arch.families import FAMILIES

        spec = next(f for f in FAMILIES if f.family == obj["family"])
        tensors = {
            n: TensorInfo(n, Role(role), layer) for n, (role, layer) in obj["tensors"].items()
        }
        blocks: dict[int, list[str]] = {}
        for info in tensors.values():
            if info.layer is not None:
                blocks.setdefault(info.layer, []).append(info.name)
        return cls(spec, Geometry(**obj["geometry"]), tensors, dict(obj["tied"]), blocks)


def expected_parameters(config) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes of the architecture, from a meta-device instance (no memory)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return {n: tuple(p.shape) for n, p in model.named_parameters()}


def expected_shape(info: TensorInfo, g: Geometry, shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """The shape a reparameterized tensor must have, or None if the role does not constrain it."""
    d, dh, hq, hkv, ff = g.hidden, g.head_dim, g.n_q_heads, g.n_kv_heads, g.d_ff
    rows = {
        Role.Q: hq * dh,
        Role.K: hkv * dh,
        Role.V: hkv * dh,
        Role.QKV: (hq + 2 * hkv) * dh,
        Role.QKV_PER_HEAD: 3 * hq * dh,
        Role.FFN_IN: ff,
        Role.FFN_IN_FUSED: 2 * ff,
    }
    if info.role in rows:
        return (rows[info.role], *shape[1:]) if len(shape) == 2 else (rows[info.role],)
    if info.role is Role.O:
        return (d, hq * dh)
    if info.role is Role.FFN_OUT:
        return (d, ff)
    if info.role in (Role.Q_NORM, Role.K_NORM):
        return (dh,)
    return None


def classify(spec: ArchSpec, config, stored: dict[str, tuple[int, ...]], where: str) -> Layout:
    """Check the stored tensors against the architecture and give each one its role."""
    geometry = geometry_of(config, spec)
    expected = {}
    for name, shape in expected_parameters(config).items():
        legacy = spec.stored_names.get(name)
        expected[legacy if legacy in stored else name] = shape
    tied: dict[str, str] = {}
    alias, canonical = spec.tied_alias
    if alias not in expected and alias in stored and canonical in stored:
        tied[alias] = canonical  # tied embeddings saved twice: treated as one tensor
    missing = [n for n in expected if n not in stored]
    if missing:
        raise CheckpointError(
            f"{where}: missing tensor {missing[0]!r} ({len(missing)} missing in all)"
        )
    unexpected = [n for n in stored if n not in expected and n not in tied]
    if unexpected:
        raise CheckpointError(
            f"{where}: tensor {unexpected[0]!r} is not a parameter of {config.model_type} "
            f"({len(unexpected)} unexpected in all)"
        )
    block_re = re.compile(spec.block_pattern)
    outside_re = re.compile(spec.outside_pattern)
    tensors: dict[str, TensorInfo] = {}
    blocks: dict[int, list[str]] = {}
    for name, shape in stored.items():
        if name in tied:
            tensors[name] = TensorInfo(name, Role.OUTSIDE, None)
            continue
        if tuple(expected[name]) != tuple(shape):
            raise CheckpointError(
                f"{where}: tensor {name!r} has shape {shape}, the architecture needs {expected[name]}"
            )
        m = block_re.match(name)
        if m:
            suffix = name[m.end() :]
            if suffix not in spec.roles:
                raise UnsupportedArchitectureError(
                    f"{where}: {spec.family} adapter does not know block tensor {name!r}"
                )
            info = TensorInfo(name, spec.roles[suffix], int(m.group(1)))
            want = expected_shape(info, geometry, shape)
            if want is not None and tuple(want) != tuple(shape):
                raise UnsupportedArchitectureError(
                    f"{where}: {name!r} has shape {shape} but the geometry {geometry} implies {want}"
                )
            blocks.setdefault(info.layer, []).append(name)
        elif outside_re.match(name):
            info = TensorInfo(name, Role.OUTSIDE, None)
        else:
            raise UnsupportedArchitectureError(
                f"{where}: {spec.family} adapter does not know tensor {name!r}"
            )
        tensors[name] = info
    if sorted(blocks) != list(range(geometry.n_layers)):
        raise CheckpointError(
            f"{where}: blocks {sorted(blocks)} do not match num_hidden_layers={geometry.n_layers}"
        )
    return Layout(spec, geometry, tensors, tied, blocks)
