import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True, scope="session")
def _client_key(tmp_path_factory):
    """Client receipts are signed with a key made for the test session, not the user's."""
    import os

    os.environ["MPU_CLIENT_KEY"] = str(tmp_path_factory.mktemp("client-key") / "client.key")
    yield


@pytest.fixture(autouse=True)
def _quiet_transformers():
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    yield


@pytest.fixture(scope="session")
def tofu_world(tmp_path_factory):
    """Synthetic TOFU plus tiny base/target/retain models (seconds, not the real `prepare`)."""
    import torch

    from mpu.data import make_dataset
    from mpu.io.datasets import load_split
    from toolkit import finetune, tiny_llama, tiny_tokenizer

    root = tmp_path_factory.mktemp("tofu-world")
    data = make_dataset("tofu", root / "data", seed=0)
    forget = [dict(r) for r in load_split(data, "forget01")]
    retain = [dict(r) for r in load_split(data, "retain99")][:60]
    corpus = [f"{r['question']} {r['answer']}" for r in forget + retain]
    tok = tiny_tokenizer(vocab_size=400, corpus=corpus)
    models = root / "models"
    base = tiny_llama(tok, seed=0, layers=2, hidden=32)
    base.save_pretrained(models / "base")
    for name, rows in (("target", forget + retain), ("retain", retain)):
        model = tiny_llama(tok, seed=0, layers=2, hidden=32)
        model.load_state_dict(base.state_dict())
        finetune(model, tok, rows, steps=60, lr=3e-3)
        model.save_pretrained(models / name)
    for name in ("base", "target", "retain"):
        tok.save_pretrained(models / name)
    torch.manual_seed(0)
    return data, models


def pytest_unconfigure(config):
    """A non-daemon thread that a test left running keeps the interpreter from exiting after the
    summary: CI then waits out its whole time limit with every test passed. Give such threads a
    moment to end, then name them with their stacks and exit non-zero instead of hanging."""
    import os
    import threading
    import time
    import traceback

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        stuck = [t for t in threading.enumerate()
                 if t is not threading.main_thread() and not t.daemon and t.is_alive()]  # fmt: skip
        if not stuck:
            return
        time.sleep(0.1)
    frames = sys._current_frames()
    for thread in stuck:
        print(f"\na test left the non-daemon thread {thread.name!r} running:", file=sys.stderr)
        traceback.print_stack(frames.get(thread.ident), file=sys.stderr)
    sys.stderr.flush()
    sys.stdout.flush()
    os._exit(3)
