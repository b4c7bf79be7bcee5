"""The README and docs/ link to each other: every relative link (and its #anchor) leads somewhere."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def anchors(page: Path) -> set[str]:
    """GitHub's anchors for a page's headings: lower case, punctuation dropped, spaces as hyphens."""
    out = set()
    for line in page.read_text().splitlines():
        if line.startswith("#"):
            out.add(re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-"))
    return out


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves(page: Path) -> None:
    broken = []
    for link in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if link.startswith(("http://", "https://", "mailto:")):
            continue
        target, _, anchor = link.partition("#")
        path = page.parent / target if target else page
        if not path.exists() or (anchor and path.suffix == ".md" and anchor not in anchors(path)):
            broken.append(link)
    assert not broken, f"{page.name}: {broken}"


def test_every_metric_is_in_the_api_reference() -> None:
    from prometheus_client import Counter

    from mlx_serve.metrics import Metrics

    metrics = Metrics()
    reference = (ROOT / "docs" / "api.md").read_text()
    names = [
        (f"{m._name}_total" if isinstance(m, Counter) else m._name)
        for m in vars(metrics).values()
        if hasattr(m, "_name")
    ]
    assert names and not [n for n in names if f"`{n}`" not in reference]
