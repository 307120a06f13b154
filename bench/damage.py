"""Single-byte flips of a rollout file: how many reads return other data than was written.

Writes a small trajectory file the way pyarrow does without page checksums and the way
rlver does (`rlver.schema.write_trajectories`: page CRCs and `content_sha256`), flips each
byte in turn (every `--stride`-th), reads it back and counts: refused, read as written,
read as other data. Prints a table and, last, `silent_corruptions=<n>` for rlver's files.

    .venv/bin/python bench/damage.py [--rows 2] [--stride 1]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.support import trajectory_row  # noqa: E402  (the tests' sample row)
from rlver import schema  # noqa: E402
from rlver.errors import RlverInputError  # noqa: E402


def read_plain(path: Path) -> tuple[pa.Table, dict]:
    pf = pq.ParquetFile(path)
    return pf.read(), dict(pf.schema_arrow.metadata or {})


def read_rlver(path: Path) -> tuple[pa.Table, dict]:
    return schema.read_trajectories(path)


def flips(path: Path, read, stride: int) -> dict[str, dict[str, int]]:
    """{region: {outcome: count}} over single-byte flips of `path` (magic words aside)."""
    data = path.read_bytes()
    good = read(path)
    footer_start = len(data) - 8 - int.from_bytes(data[-8:-4], "little")
    out: dict[str, dict[str, int]] = {}
    for pos in range(4, len(data) - 4, stride):
        damaged = bytearray(data)
        damaged[pos] ^= 0xFF
        path.write_bytes(bytes(damaged))
        try:
            table, meta = read(path)
            outcome = "as written" if table.equals(good[0]) and meta == good[1] else "other data"
        except (RlverInputError, OSError, ValueError, pa.ArrowException):
            outcome = "refused"
        region = "body" if pos < footer_start else "footer"
        out.setdefault(region, {}).setdefault(outcome, 0)
        out[region][outcome] += 1
    path.write_bytes(data)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=2)
    ap.add_argument("--stride", type=int, default=1)
    a = ap.parse_args()
    rows = [trajectory_row(i) for i in range(a.rows)]
    with tempfile.TemporaryDirectory() as tmp:
        plain, ours = Path(tmp) / "plain.parquet", Path(tmp) / "rlver.parquet"
        pq.write_table(pa.Table.from_pylist(rows, schema=schema.TRAJECTORY_SCHEMA), plain,
                       compression="zstd")
        schema.write_trajectories(ours, rows, config_hash="c" * 16, policy_sha256="p" * 64,
                                  kind="rollout")
        results = {"pyarrow, no checksums": flips(plain, read_plain, a.stride),
                   "rlver (page CRC + content_sha256)": flips(ours, read_rlver, a.stride)}
    print(f"{'file':36} {'region':7} {'flipped':>8} {'refused':>8} {'as written':>11} "
          f"{'other data':>11}")
    for name, regions in results.items():
        for region, c in regions.items():
            print(f"{name:36} {region:7} {sum(c.values()):8} {c.get('refused', 0):8} "
                  f"{c.get('as written', 0):11} {c.get('other data', 0):11}")
    silent = sum(c.get("other data", 0) for c in results["rlver (page CRC + content_sha256)"]
                 .values())
    print(f"silent_corruptions={silent}")


if __name__ == "__main__":
    main()
