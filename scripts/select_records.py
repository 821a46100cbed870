"""Keep the records of a results file whose ``id`` is among another file's items (for
reporting two runs on the same sentences); the results' meta file is copied beside.

    python scripts/select_records.py RESULTS ITEMS OUT
"""

import json
import shutil
import sys


def main(results: str, items: str, out: str) -> None:
    with open(items, encoding="utf-8") as handle:
        ids = {json.loads(line)["id"] for line in handle if line.strip()}
    kept = 0
    with open(results, encoding="utf-8") as source, open(
        out, "w", encoding="utf-8"
    ) as target:
        for line in source:
            if line.strip() and json.loads(line)["id"] in ids:
                target.write(line)
                kept += 1
    shutil.copy(results + ".meta.json", out + ".meta.json")
    print(f"{kept} of the {len(ids)} items' records kept in {out}")


if __name__ == "__main__":
    main(*sys.argv[1:4])
