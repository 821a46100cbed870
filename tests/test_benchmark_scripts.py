"""The speed benchmark's report reads every key it writes, and writes nothing tracked
unless asked (``--save``)."""

from __future__ import annotations

import hashlib
import importlib
import itertools
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TRACKED = [
    ROOT / "benchmarks" / "results" / "speed.json",
    ROOT / "docs" / "_static" / "speed_ratio.png",
]


@pytest.fixture(scope="module")
def speed():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        yield importlib.import_module("speed_benchmark")
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_every_key_parses_back(speed):
    for head, family, layers, length, hidden in itertools.product(
        speed.HEADS, speed.FAMILIES, (6, 12), (11, 128), (384, 768)
    ):
        name = speed.key(head, layers, length, family, hidden)
        assert speed._parse(name) == (family, head, layers, length, hidden), name


def test_report_of_the_tracked_results_writes_nothing(speed, capsys, tmp_path):
    before = [_digest(path) for path in TRACKED]
    speed.main(["--report"])
    table = capsys.readouterr().out
    assert "| masked-lm |" in table and "| headless |" in table
    assert [_digest(path) for path in TRACKED] == before
    plot = tmp_path / "ratio.png"
    speed.main(["--report", "--save", "--plot", str(plot)])
    assert plot.stat().st_size > 0
    assert [_digest(path) for path in TRACKED] == before
