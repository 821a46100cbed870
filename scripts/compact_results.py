"""Compress evaluation results for the repository: floats rounded to 7 significant
digits (the embedded model runs in float32), one gzipped JSON line per example; the
meta file is copied beside it so that a run can resume from the unpacked file.

    python scripts/compact_results.py runs/agreement.jsonl results/agreement_minilm
"""

import gzip
import json
import os
import shutil
import sys


def _round(value):
    if isinstance(value, float):
        return float(f"{value:.7g}")
    if isinstance(value, list):
        return [_round(item) for item in value]
    if isinstance(value, dict):
        return {key: _round(item) for key, item in value.items()}
    return value


def main(source: str, folder: str) -> None:
    os.makedirs(folder, exist_ok=True)
    name = os.path.basename(source)
    with open(source, encoding="utf-8") as lines, gzip.open(
        os.path.join(folder, name + ".gz"), "wt", encoding="utf-8", compresslevel=9
    ) as out:
        for line in lines:
            if line.strip():
                out.write(json.dumps(_round(json.loads(line))) + "\n")
    shutil.copy(source + ".meta.json", os.path.join(folder, name + ".meta.json"))


if __name__ == "__main__":
    main(*sys.argv[1:3])
