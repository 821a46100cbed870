"""No committed file names a folder of the machine that wrote it: pages, summaries,
meta files, records and RUNS.md give paths relative to the results folder."""

from __future__ import annotations

import gzip
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Absolute paths of a machine (built from parts, so this file does not match itself).
MACHINE_FOLDERS = ("tmp", "work", "home", "root", "Users", "mnt", "scratch", "var/folders")
ABSOLUTE = re.compile(
    r"(?:^|[\s\"'`(=:,\[])(/(?:" + "|".join(MACHINE_FOLDERS) + r")/[^\s\"'`)]*)"
    + r"|[A-Za-z]:\\" + r"\\?(?:Users|tmp)"
)
#: Files that are not text.
BINARY = (".png", ".jpg", ".gif", ".ico", ".whl", ".pdf", ".woff", ".woff2")


def committed_files():
    try:
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT,
                                capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [ROOT / name for name in listed.decode().split("\0") if name]


def absolute_paths(path: Path):
    """The machine paths a file holds (a gzipped file read unpacked)."""
    if path.suffix in BINARY or not path.is_file():
        return []
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    text = raw.decode("utf-8", errors="replace")
    return [m.group(0).strip() for m in ABSOLUTE.finditer(text)]


def test_no_committed_file_names_a_folder_of_the_machine():
    found = {}
    for path in committed_files():
        if path.name == Path(__file__).name:
            continue
        hits = absolute_paths(path)
        if hits:
            found[str(path.relative_to(ROOT))] = hits[:3]
    assert not found, f"absolute paths in committed files: {found}"


@pytest.mark.parametrize("text,hit", [
    ('"input": "/tmp/routes_run/items.jsonl"', True),
    ("`RUNS=/work/wt/runs`", True),
    ("see /home/user/x", True),
    ("C:\\Users\\me\\runs", True),
    ('"input": "items_100.jsonl"', False),
    ("results/agreement_minilm/tmp/x and docs/work/", False),
    ("https://example.org/tmp/x", False),
])
def test_the_scan_finds_machine_paths_and_only_them(tmp_path, text, hit):
    plain = tmp_path / "page.md"
    plain.write_text(text, encoding="utf-8")
    packed = tmp_path / "records.jsonl.gz"
    packed.write_bytes(gzip.compress(text.encode()))
    for path in (plain, packed):
        assert bool(absolute_paths(path)) == hit, (text, path.name)
