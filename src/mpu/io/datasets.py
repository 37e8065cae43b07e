"""Load TOFU / MUSE / WMDP splits, real or synthetic, through one code path (`datasets`).

A source is either a local folder or a Hugging Face hub id (`locuslab/TOFU`,
`muse-bench/MUSE-News`, `cais/wmdp`, ...). Local folders may hold our synthetic layout
(`DIR/{config}/{split}.jsonl`) or real data saved as JSON / JSON lines / Parquet
(`DIR/{config}/{split}.parquet`, `DIR/{config}/{split}-00000-of-00001.parquet`, or, for TOFU's
single-split configs, `DIR/{config}.json`). Every returned dataset carries an integer `index`
column (the row position) and is checked against the schema of docs/metrics.md, so a missing
split or field fails here, with the file named, rather than deep inside a metric.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mpu.errors import ConfigError, DataError
from mpu.io.cache import datasets_cache

QA = {"question": str, "answer": str}
PERTURBED = {
    **QA,
    "paraphrased_answer": str,
    "paraphrased_question": str,
    "perturbed_answer": list,
}
UTILITY_PERTURBED = {**QA, "perturbed_answer": list}
TEXT = {"text": str}

# (config regex, split regex) -> required fields with their Python types.
SCHEMAS: tuple[tuple[str, str, Mapping[str, type]], ...] = (
    # TOFU
    (r"forget\d\d_perturbed|retain_perturbed", r"train", PERTURBED),
    (r"forget\d\d_alternate", r"train", {**QA, "alternate": list}),
    (r"(real_authors|world_facts)_perturbed", r"train", UTILITY_PERTURBED),
    (r"full|forget\d\d|retain\d\d|holdout\d\d|real_authors|world_facts", r"train", QA),
    # MUSE
    (r"raw|scal|sust", r".*", TEXT),
    (r"knowmem", r".*", QA),
    (r"verbmem", r".*", {"prompt": str, "gt": str}),
    (r"privleak", r".*", TEXT),
    # WMDP
    (r"wmdp-(bio|chem|cyber)", r".*", {"question": str, "choices": list, "answer": int}),
    (r".*-(forget|retain)-corpus", r".*", TEXT),
)

_LOCAL_PATTERNS = (
    "{config}/{split}.jsonl",
    "{config}/{split}.json",
    "{config}/{split}.parquet",
    "{config}/{split}-*.parquet",
    "data/{config}/{split}-*.parquet",
    "{config}/{split}-*.json*",
)


@dataclass(frozen=True)
class TofuSplits:
    """TOFU's split names for one forget set: forget10 → retain90, holdout10, forget10_perturbed."""

    forget: str
    retain: str
    holdout: str

    @property
    def forget_perturbed(self) -> str:
        return f"{self.forget}_perturbed"

    @property
    def forget_alternate(self) -> str:
        """The forget rows with AltPO's offline alternate answers (`alternate`: a list)."""
        return f"{self.forget}_alternate"


def tofu_splits(forget: str) -> TofuSplits:
    """The retain complement and the holdout of a TOFU forget split (`forget01|05|10`)."""
    m = re.fullmatch(r"forget(\d\d)", str(forget))
    if m is None:
        raise ConfigError(f"{forget!r} is not a TOFU forget split (forget01, forget05, forget10)")
    pct = int(m.group(1))
    return TofuSplits(forget, f"retain{100 - pct:02d}", f"holdout{pct:02d}")


def is_tofu_forget(name: str) -> bool:
    return re.fullmatch(r"forget\d\d", str(name)) is not None


def schema_for(config: str, split: str) -> Mapping[str, type] | None:
    """Fields (with types) the metrics need from (config, split); None for unknown configs."""
    for config_re, split_re, fields in SCHEMAS:
        if re.fullmatch(config_re, config) and re.fullmatch(split_re, split):
            return fields
    return None


def require_fields(ds: Any, fields: Iterable[str] | Mapping[str, type], where: str) -> None:
    """Raise DataError naming `where` if a field is absent or (for a mapping) of the wrong type.

    Types are checked on the first row, and list fields must have the same length in every
    row (a fixed K of perturbed answers, as the metrics assume).
    """
    names = list(fields)
    missing = [f for f in names if f not in ds.column_names]
    if missing:
        raise DataError(f"{where}: missing field(s) {missing}; present: {sorted(ds.column_names)}")
    if len(ds) == 0:
        raise DataError(f"{where}: the split is empty")
    if isinstance(fields, Mapping):
        first = ds[0]
        for name, typ in fields.items():
            value = first[name]
            ok = isinstance(value, typ) and not (typ is int and isinstance(value, bool))
            if not ok:
                raise DataError(
                    f"{where}: field {name!r} should be {typ.__name__}, "
                    f"got {type(value).__name__} in row 0"
                )
            if typ is list:
                lengths = {len(v) for v in ds[name]}
                if len(lengths) != 1:
                    raise DataError(
                        f"{where}: field {name!r} has lists of different lengths {sorted(lengths)}"
                    )


def _find_local(root: Path, config: str, split: str) -> list[Path]:
    for pattern in _LOCAL_PATTERNS:
        hits = sorted(root.glob(pattern.format(config=config, split=split)))
        if hits:
            return hits
    if split == "train":  # TOFU / WMDP-corpora single files: DIR/{config}.json[l] / .parquet
        for ext in ("jsonl", "json", "parquet", "txt"):
            p = root / f"{config}.{ext}"
            if p.is_file():
                return [p]
    return []


def _available(root: Path) -> list[str]:
    found = sorted(
        str(p.relative_to(root).with_suffix(""))
        for p in root.rglob("*")
        if p.suffix in (".jsonl", ".json", ".parquet") and p.name != "manifest.json"
    )
    return found[:30]


def _load_corpus_lines(files: list[Path]):
    """WMDP corpus files as OpenUnlearning reads them: a line that is a JSON object with
    `text` gives that text, any other non-empty line is taken verbatim (docs/metrics.md)."""
    import datasets

    texts = []
    for path in files:
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            text = line
            if line.lstrip().startswith("{"):
                try:
                    obj = json.loads(line)
                    if isinstance(obj, dict) and isinstance(obj.get("text"), str):
                        text = obj["text"]
                except ValueError:
                    pass
            texts.append(text)
    return datasets.Dataset.from_dict({"text": texts})


def _utf8_text(path: Path) -> str:
    """A text file's contents; bytes that are not UTF-8 are an error naming the file and the
    place (the Arrow reader would accept them and fail on the first row read)."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(f"{path}: line {line} is not UTF-8 text ({exc.reason} at byte "
                        f"{exc.start})") from None  # fmt: skip


def _check_json_rows(path: Path) -> None:
    """Every row of a JSON Lines file (or the list of a JSON file) is a JSON object: checked
    here, line by line, because the Arrow reader crashes the process on some other values
    (a JSON Lines file holding `null` segfaults it)."""
    text = _utf8_text(path)
    whole = None
    if path.suffix != ".jsonl":  # a .json file is one JSON value or, as TOFU's own, JSON Lines
        try:
            whole = json.loads(text)
        except (json.JSONDecodeError, RecursionError):
            whole = None
    if whole is None:
        for n, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                _json_object(line, f"{path}: line {n}")
        return
    rows = whole if isinstance(whole, list) else [whole]
    if not rows or not all(isinstance(r, dict) for r in rows):
        raise DataError(f"{path}: expected a JSON object or a list of objects (one per row)")


def _json_value(text: str, where: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{where}: not JSON ({exc.msg})") from None
    except RecursionError:
        raise DataError(f"{where}: nested too deeply") from None


def _json_object(text: str, where: str) -> dict:
    value = _json_value(text, where)
    if not isinstance(value, dict):
        raise DataError(f"{where}: a row must be a JSON object, not {type(value).__name__}")
    return value


def _load_files(files: list[Path], config: str = ""):
    import datasets

    if config.endswith("-corpus") and files[0].suffix in (".jsonl", ".txt"):
        return _load_corpus_lines(files)

    builder = "parquet" if files[0].suffix == ".parquet" else "json"
    for f in files:
        if f.stat().st_size == 0 or (builder == "json" and not _utf8_text(f).strip()):
            raise DataError(f"{f}: the file is empty (no rows)")
        if builder == "json":
            _check_json_rows(f)
    try:
        return datasets.load_dataset(
            builder, data_files=[str(f) for f in files], split="train", cache_dir=datasets_cache()
        )
    except Exception as exc:  # datasets raises many types for malformed files
        reason = (str(exc) or type(exc).__name__).splitlines()[0]
        raise DataError(f"{files[0]}: cannot be read as {builder}: {reason}") from None


def load_split(
    source: str | Path,
    config: str,
    split: str = "train",
    *,
    fields: Iterable[str] | Mapping[str, type] | None = None,
):
    """Load one (config, split) as a `datasets.Dataset` with an added integer `index` column.

    `source` is a local data dir or a hub id (passed to `datasets.load_dataset(source,
    name=config, split=split)`; only when the user asks for it — nothing here downloads by
    default). `fields` overrides the schema check; by default the docs/metrics.md schema of the
    config is required.
    """
    root = Path(source)
    if root.exists():
        if not root.is_dir():
            raise DataError(f"{root}: a data source must be a folder or a hub id")
        files = _find_local(root, config, split)
        if not files:
            raise DataError(
                f"{root}: no split {config}/{split} (looked for {config}/{split}.jsonl, "
                f".json, .parquet); available: {_available(root) or 'nothing'}"
            )
        ds = _load_files(files, config)
        where = str(files[0])
    else:
        if not re.fullmatch(r"[\w.-]+/[\w.-]+", str(source)):
            # hub ids are owner/name; anything else is a mistyped folder (no 25 s offline wait)
            raise DataError(f"{source}: no such folder (a hub id looks like owner/name)")
        import datasets

        try:
            ds = datasets.load_dataset(
                str(source), name=config, split=split, cache_dir=datasets_cache()
            )
        except Exception as exc:
            raise DataError(
                f"{source}: cannot load config {config!r} split {split!r}: {exc}".splitlines()[0]
            ) from None
        where = f"{source}:{config}/{split}"
    required = schema_for(config, split) if fields is None else fields
    if required is not None:
        require_fields(ds, required, where)
    if "index" in ds.column_names:
        ds = ds.remove_columns("index")
    return ds.add_column("index", list(range(len(ds))))


def load_idk(source: str | Path) -> list[str]:
    """IDK refusal answers: `idk.jsonl` in a data dir (or the file itself), one per line.

    Lines are stripped and used verbatim (upstream behaviour); a line that is a JSON object
    with a `text` field, or a JSON string, is decoded first.
    """
    path = Path(source)
    if path.is_dir():
        path = path / "idk.jsonl"
    if not path.is_file():
        raise DataError(f"{path}: IDK answers file not found")
    answers = []
    for line in _utf8_text(path).splitlines():
        line = line.strip()
        if not line:
            continue
        if line[0] in '{"':
            try:
                obj = json.loads(line)
                line = obj["text"] if isinstance(obj, dict) else str(obj)
            except (ValueError, KeyError, TypeError):
                pass
        answers.append(line.strip())
    if not answers:
        raise DataError(f"{path}: no IDK answers in the file")
    return answers


def read_manifest(root: str | Path) -> dict:
    """The manifest of a synthetic data dir (DataError if absent or malformed)."""
    path = Path(root) / "manifest.json"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: not found (is {root} a data dir from `mpu data make`?)") from None
    except ValueError as exc:
        raise DataError(f"{path}: invalid JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("benchmark") not in ("tofu", "muse", "wmdp"):
        raise DataError(f"{path}: 'benchmark' must be one of tofu, muse, wmdp")
    return manifest
