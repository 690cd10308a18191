"""Every number the README's Results and Benchmarks sections quote is in a file that the same row or bullet
links: a results folder under benchmarks/results/ (written by the command stored beside it) or, for the
throughput table, benchmarks/NOTES.md."""

from __future__ import annotations

import glob
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# A decimal figure (0.505, 1.82, 4.9x); not a version (1.0.2), not part of a word or a path.
NUMBER = re.compile(r"(?<![\w./-])\d+\.\d+(?![\w.]*\d)")
# A file or folder the block links.
LINK = re.compile(r"benchmarks/(?:results/[\w./-]*|NOTES\.md)")


def section(text: str, title: str) -> str:
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else None]


def blocks(text: str) -> list[str]:
    """Table rows, bullets and paragraphs: the unit a number and its file share."""
    out, current = [], []
    for line in text.splitlines():
        starts_new = line.startswith(("|", "- ")) or not line.strip() or line.startswith("#")
        if starts_new and current:
            out.append("\n".join(current))
            current = []
        if line.strip() and not line.startswith("#") and not re.fullmatch(r"\|[-:| ]+\|", line.strip()):
            current.append(line)
    return out + (["\n".join(current)] if current else [])


def quoted_numbers(block: str) -> list[str]:
    text = re.sub(r"!\[[^\]]*\]\([^)]*\)", "", block)  # images
    text = re.sub(r"`[^`]*`", "", text)  # flags, paths and code: not results
    return NUMBER.findall(text)


def file_numbers(link: str) -> list[float]:
    path = os.path.join(ROOT, link)
    paths = [path] if os.path.isfile(path) else glob.glob(os.path.join(path, "*.md")) + glob.glob(os.path.join(path, "*.txt"))
    numbers = []
    for p in paths:
        numbers += [float(n.replace(",", "")) for n in re.findall(r"\d[\d,]*\.?\d*", open(p, encoding="utf-8").read())]
    return numbers


def found(number: str, candidates: list[float]) -> bool:
    """A figure written with d decimals is found when a number in the file rounds to it."""
    decimals = len(number.split(".")[1])
    return any(abs(round(v, decimals) - float(number)) < 1e-9 for v in candidates)


def readme() -> str:
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        return f.read()


@pytest.mark.parametrize("title", ["Results", "Benchmarks"])
def test_every_number_in_the_section_is_in_the_file_its_block_links(title):
    checked = 0
    for block in blocks(section(readme(), title)):
        numbers = quoted_numbers(block)
        if not numbers:
            continue
        links = LINK.findall(block)
        assert links, f"README {title}: this block quotes {numbers} but links no file:\n{block}"
        for link in links:
            assert os.path.exists(os.path.join(ROOT, link.rstrip("/."))), f"README {title} links {link}, which does not exist"
        candidates = [v for link in links for v in file_numbers(link.rstrip("."))]
        missing = [n for n in numbers if not found(n, candidates)]
        assert not missing, f"README {title}: {missing} are in none of {links}:\n{block}"
        checked += len(numbers)
    assert checked > 0


def test_the_check_fails_on_a_number_that_is_not_in_its_file():
    block = "| quick | 0.999 | `benchmarks/results/quick-mortarmayhem/` |"
    candidates = file_numbers("benchmarks/results/quick-mortarmayhem/")
    assert quoted_numbers(block) == ["0.999"] and not found("0.999", candidates)
    assert found("1.82", candidates) and found("1.820", candidates)  # the table's 1.820, rounded in the README
