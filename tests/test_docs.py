"""The docs stay true: the job-spec reference matches the models, the README stays short, links resolve."""

import re
from pathlib import Path

from ragworks.spec_reference import render

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_job_spec_reference_is_current():
    assert (DOCS / "job-spec.md").read_text() == render(), \
        "docs/job-spec.md is stale: run python -m ragworks.spec_reference > docs/job-spec.md"


def test_readme_is_short():
    lines = len((ROOT / "README.md").read_text().splitlines())
    assert lines <= 250, f"README.md has {lines} lines (at most 250): move detail into docs/"


def test_relative_links_resolve():
    broken = []
    for page in [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]:
        for target in LINK.findall(page.read_text()):
            if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):  # http(s), mailto, same page
                continue
            path = target.split("#", 1)[0]
            if not (page.parent / path).exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, "links to missing files:\n" + "\n".join(broken)
