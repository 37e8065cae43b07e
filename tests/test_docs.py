"""The documentation a user's clone has: no pointer outside the repository, no dead link."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _texts():
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    files += sorted((ROOT / "src" / "mpu").rglob("*.py"))
    return [(p, p.read_text(encoding="utf-8")) for p in files]


def test_nothing_points_outside_the_repository():
    bad = [
        f"{p.relative_to(ROOT)}:{i + 1}"
        for p, text in _texts()
        for i, line in enumerate(text.splitlines())
        if re.search(r"shared/|\b(MPU|METHODS|METRICS|DESIGN)\.md\b", line)
    ]
    assert not bad, bad


def test_docs_exist_and_every_doc_reference_resolves():
    assert (ROOT / "docs" / "README.md").is_file()
    assert "docs/" in (ROOT / "README.md").read_text()
    missing = set()
    for p, text in _texts():
        for ref in re.findall(r"docs/([\w.-]+\.md)", text):
            if not (ROOT / "docs" / ref).is_file():
                missing.add(f"{p.relative_to(ROOT)} → docs/{ref}")
        if p.parent.name == "docs":
            for ref in re.findall(r"\]\(([\w.-]+\.md)\)", text):
                if not (ROOT / "docs" / ref).is_file():
                    missing.add(f"{p.relative_to(ROOT)} → {ref}")
    assert not missing, sorted(missing)
