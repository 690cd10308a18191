"""Every number the README's "What is measured" and "Results" sections, and the whole of benchmarks/README.md,
quote is in a file that the same row or bullet links: a results folder under benchmarks/results/ (written by the
command stored beside it), benchmarks/NOTES.md, a preset under configs/ (whose header states the number it
targets or measured) or a paper-preset page under docs/."""

from __future__ import annotations

import glob
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# A decimal figure (0.505, 1.82, 4.9x); not a version (1.0.2), not part of a word or a path.
NUMBER = re.compile(r"(?<![\w./-])\d+\.\d+(?![\w.]*\d)")
# A file or folder the block links, relative to the document that quotes it.
LINK = re.compile(
    r"(?<![\w./-])(?:\.\./)*(?:"
    r"(?:benchmarks/)?(?:results/[\w./-]*|NOTES\.md)"
    r"|configs/[\w./-]+\.toml"
    r"|docs/paper-presets-[\w-]+\.md)"
)
# (document, sections checked; None: the whole document)
DOCUMENTS = [("README.md", ("What is measured", "Results")), (os.path.join("benchmarks", "README.md"), None)]


def section(text: str, title: str) -> str:
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else None]


def blocks(text: str) -> list[str]:
    """Table rows, bullets and paragraphs: the unit a number and its file share. Code blocks are commands."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
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
    text = re.sub(r"\]\([^)]*\)", "]", text)  # link targets
    text = re.sub(r"`[^`]*`", "", text)  # flags, paths and code: not results
    return NUMBER.findall(text)


def linked_paths(block: str) -> list[str]:
    """The files and folders a block names: markdown link targets (not their texts) and bare paths; no images."""
    text = re.sub(r"!\[[^\]]*\]\([^)]*\)", "", block)
    text = re.sub(r"\[[^\]]*\]\(([^)]*)\)", r" \1 ", text)
    return [link.rstrip(".") for link in LINK.findall(text)]


def file_numbers(path: str) -> list[float]:
    paths = [path] if os.path.isfile(path) else glob.glob(os.path.join(path, "*.md")) + glob.glob(os.path.join(path, "*.txt"))
    numbers = []
    for p in paths:
        numbers += [float(n.replace(",", "")) for n in re.findall(r"\d[\d,]*\.?\d*", open(p, encoding="utf-8").read())]
    return numbers


def found(number: str, candidates: list[float]) -> bool:
    """A figure written with d decimals is found when a number in the file rounds to it."""
    decimals = len(number.split(".")[1])
    return any(abs(round(v, decimals) - float(number)) < 1e-9 for v in candidates)


def checked_parts(document: str, titles) -> list[tuple[str, str]]:
    with open(os.path.join(ROOT, document), encoding="utf-8") as f:
        text = f.read()
    return [(f"{document} ({title})", section(text, title)) for title in titles] if titles else [(document, text)]


@pytest.mark.parametrize(
    "document, part", [(d, t) for d, titles in DOCUMENTS for t in (titles or [None])],
    ids=lambda value: value or "whole",
)
def test_every_number_is_in_the_file_its_block_links(document, part):
    folder = os.path.dirname(os.path.join(ROOT, document))
    checked = 0
    for name, text in checked_parts(document, [part] if part else None):
        for block in blocks(text):
            numbers = quoted_numbers(block)
            if not numbers:
                continue
            links = linked_paths(block)
            assert links, f"{name}: this block quotes {numbers} but links no file:\n{block}"
            paths = [os.path.normpath(os.path.join(folder, link)) for link in links]
            for link, path in zip(links, paths):
                assert os.path.exists(path), f"{name} links {link}, which does not exist"
            candidates = [v for path in paths for v in file_numbers(path)]
            missing = [n for n in numbers if not found(n, candidates)]
            assert not missing, f"{name}: {missing} are in none of {links}:\n{block}"
            checked += len(numbers)
    assert checked > 0


def test_the_check_fails_on_a_number_that_is_not_in_its_file():
    block = "| quick | 0.999 | `benchmarks/results/quick-mortarmayhem/` |"
    candidates = file_numbers(os.path.join(ROOT, "benchmarks/results/quick-mortarmayhem/"))
    assert quoted_numbers(block) == ["0.999"] and not found("0.999", candidates)
    assert found("1.82", candidates) and found("1.820", candidates)  # the table's 1.820, rounded in the README


def test_links_resolve_from_the_document_that_quotes_them():
    block = ("| x | 1.82 +- 0.06 | [the results](results/quick-mortarmayhem/), "
             "[docs/paper-presets-ppo_trxl.md](../configs/quick/ppo_trxl/MortarMayhem-Grid-v0.toml) |")
    assert quoted_numbers(block) == ["1.82", "0.06"]
    assert linked_paths(block) == ["results/quick-mortarmayhem/", "../configs/quick/ppo_trxl/MortarMayhem-Grid-v0.toml"]
