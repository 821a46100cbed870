"""Compress evaluation results for the repository: floats rounded to 7 significant
digits (the embedded model runs in float32), one gzipped JSON line per example in
data-set order; the meta file is copied beside it so that a run can resume from the
unpacked file.

    python scripts/compact_results.py runs/agreement.jsonl results/agreement_minilm

The part files of a sharded run still under way (``<source>.part-r-of-N.jsonl``) are
taken in too, so that its progress can be committed before every shard is complete: a
resumed shard skips the items already in the unpacked file. A line a shard is still
writing is left out.
"""

import glob
import gzip
import json
import os
import shutil
import sys

from captum_influence_patterns.paper.records import load_results


def _round(value):
    if isinstance(value, float):
        return float(f"{value:.7g}")
    if isinstance(value, list):
        return [_round(item) for item in value]
    if isinstance(value, dict):
        return {key: _round(item) for key, item in value.items()}
    return value


def main(source: str, folder: str) -> None:
    parts = sorted(glob.glob(glob.escape(source) + ".part-*-of-*.jsonl"))
    records = load_results([source, *parts], include_skipped=True)
    records.sort(key=lambda record: record["index"])
    os.makedirs(folder, exist_ok=True)
    name = os.path.basename(source)
    with gzip.open(
        os.path.join(folder, name + ".gz"), "wt", encoding="utf-8", compresslevel=9
    ) as out:
        for record in records:
            out.write(json.dumps(_round(record)) + "\n")
    shutil.copy(source + ".meta.json", os.path.join(folder, name + ".meta.json"))
    print(f"{len(records)} records ({len(parts)} shard parts) -> {folder}/{name}.gz")


if __name__ == "__main__":
    main(*sys.argv[1:3])
