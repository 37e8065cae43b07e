"""The layering of docs/architecture.md, checked on the source: imports point down, domain packages do not
import each other, and tensor names live only in `mpu.arch`.

Layers (top to bottom): interface (`mpu.cli`, `mpu.federated`, the `mpu` facade),
orchestration (`mpu.server`, `mpu.client`, `mpu.pipeline`), domain (`mpu.protocol`,
`mpu.methods`, `mpu.eval`, `mpu.privacy`, `mpu.data`), foundation (`mpu.arch`, `mpu.io`,
`mpu.config`, `mpu.devices`, `mpu.text`, `mpu.logs`, `mpu.errors`). Lazy imports inside functions count like any other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "mpu"
LAYERS = {
    "interface": ("cli", "federated", "__init__"),
    "orchestration": ("server", "client", "pipeline"),
    "domain": ("protocol", "methods", "eval", "privacy", "data"),
    "foundation": ("arch", "io", "config", "devices", "text", "logs", "errors"),
}
RANK = {"foundation": 0, "domain": 1, "orchestration": 2, "interface": 3}
TENSOR_NAMES = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "qkv_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
    "gate_up_proj",
    "query_key_value",
    "dense_h_to_4h",
    "dense_4h_to_h",
    "lm_head",
    "embed_tokens",
    "embed_in",
    "embed_out",
    "model.layers",
    "gpt_neox.layers",
    "input_layernorm",
    "post_attention_layernorm",
)


def package_of(module: str) -> str | None:
    """`mpu.eval.tofu` → `eval`; `mpu` itself → `__init__`; None outside mpu."""
    parts = module.split(".")
    if parts[0] != "mpu":
        return None
    return parts[1] if len(parts) > 1 else "__init__"


def layer_of(package: str) -> str:
    for layer, packages in LAYERS.items():
        if package in packages:
            return layer
    raise AssertionError(f"package mpu.{package} is in no layer: add it to LAYERS")


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1] if len(parts) > 1 else parts
    return ".".join(parts) if parts != ["mpu", "__init__"] else "mpu"


def imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out += [(node.lineno, node.module)]
            out += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return out


def import_violations(module: str, source: str) -> list[str]:
    """Imports of `module` that point up a layer or across domain packages."""
    own = package_of(module)
    own_layer = layer_of(own)
    bad = []
    for line, target in imported_modules(ast.parse(source)):
        pkg = package_of(target)
        if pkg is None or pkg == own or (pkg == "__init__" and target != "mpu"):
            continue
        if target.count(".") == 1 and pkg not in {p for ps in LAYERS.values() for p in ps}:
            continue  # `from mpu import x`: x is a name, resolved as its own module below
        layer = layer_of(pkg)
        if RANK[layer] > RANK[own_layer]:
            bad.append(f"{module}:{line} imports {target} ({own_layer} → {layer})")
        elif layer == own_layer == "domain":
            bad.append(f"{module}:{line} imports {target} (domain → another domain package)")
    return bad


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = getattr(node, "body", [])
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def tensor_name_violations(module: str, source: str) -> list[str]:
    """String literals (docstrings aside) naming a tensor or module path outside mpu.arch."""
    if package_of(module) == "arch":
        return []
    tree = ast.parse(source)
    docs = _docstrings(tree)
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            text = node.value.replace("\\", "")
            hits = [n for n in TENSOR_NAMES if n in text]
            if hits:
                bad.append(f"{module}:{node.lineno} names {hits[0]!r}")
    return bad


def sources() -> list[tuple[str, str]]:
    return [(module_name(p), p.read_text()) for p in sorted(SRC.rglob("*.py"))]


def test_every_import_points_down_and_domains_are_independent():
    bad = [v for module, source in sources() for v in import_violations(module, source)]
    assert not bad, "\n".join(bad)


def test_tensor_names_live_only_in_arch():
    bad = [v for module, source in sources() for v in tensor_name_violations(module, source)]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize(
    ("module", "source", "found"),
    [
        ("mpu.eval.tofu", "from mpu.data import load_split", "domain → another domain"),
        ("mpu.methods.npo", "import mpu.client.trainer", "domain → orchestration"),
        ("mpu.io.checkpoint", "def f():\n    from mpu.server.job import Server", "foundation"),
        ("mpu.server.job", "from mpu.cli import main", "orchestration → interface"),
    ],
)
def test_the_import_check_can_fail(module, source, found):
    assert any(found in v for v in import_violations(module, source))


def test_the_import_check_allows_downward_imports():
    ok = "from mpu.eval.tofu import evaluate_tofu\nfrom mpu.io.checkpoint import Checkpoint"
    assert import_violations("mpu.pipeline.experiment", ok) == []
    assert import_violations("mpu.cli.run", "from mpu.server.job import Server") == []


def test_the_tensor_name_check_can_fail():
    src = '"""Docstrings may say lm_head."""\nNAME = r"model\\.layers\\.7"\nX = "lm_head.weight"'
    found = tensor_name_violations("mpu.methods.rmu", src)
    assert [v.split()[-1] for v in found] == ["'model.layers'", "'lm_head'"]
    assert tensor_name_violations("mpu.arch.families", src) == []
