"""Reading an embedding matrix back: raw .npy against the Parquet layouts an embeddings shard could use.

One process, the same seeded float32 matrix (default CIRCO gallery shape 123,403 x 512) written once per layout
to a temporary folder, then read from page cache (1 warm-up, median of --repeats) into a float32 numpy array:
  npy                      np.load                                      (the floor)
  fsl zstd                 fixed_size_list<float32>, zstd               (what the store wrote before issue 14)
  fsl none                 fixed_size_list<float32>, uncompressed
  fsl bss zstd             fixed_size_list<float32>, BYTE_STREAM_SPLIT + zstd
  fsb zstd / fsb none      fixed_size_binary(4*dim) column, zstd / uncompressed
  store                    the layout cirflow writes now, read by `Artifact.embeddings()` (sha256 check included)
Parquet files are written with one row group per `--shard` rows, as the store's shards are. Ratio = npy
seconds / layout seconds (higher is better; the issue 14 goal is >= 0.5). JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def timed(fn, repeats: int) -> tuple[float, list[float]]:
    fn()
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t)
    return statistics.median(runs), runs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=123_403)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--shard", type=int, default=4096, help="rows per row group / store shard")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from cirflow.storage import ArtifactStore, begin
    from cirflow.tasks.embeddings import embeddings_table

    rng = np.random.default_rng(0)
    emb = rng.standard_normal((args.rows, args.dim), dtype=np.float32)
    ids = [f"{i:012d}" for i in range(args.rows)]
    tmp = Path(tempfile.mkdtemp(prefix="emb-read-"))
    np.save(tmp / "e.npy", emb)
    id_col = pa.array(ids, pa.string())
    fsl = pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), args.dim)
    fsb = pa.FixedSizeBinaryArray.from_buffers(pa.binary(4 * args.dim), args.rows, [None, pa.py_buffer(emb)])
    layouts = {
        "fsl zstd": (fsl, dict(compression="zstd")),
        "fsl none": (fsl, dict(compression="none")),
        "fsl bss zstd": (fsl, dict(compression="zstd", use_dictionary=False, use_byte_stream_split=["embedding"])),
        "fsb zstd": (fsb, dict(compression="zstd")),
        "fsb none": (fsb, dict(compression="none")),
    }
    for name, (col, kw) in layouts.items():
        pq.write_table(pa.table({"id": id_col, "embedding": col}), tmp / f"{name}.parquet", row_group_size=args.shard,
                       **kw)

    def read_npy():
        return np.load(tmp / "e.npy")

    def reader(name):
        def read():
            col = pq.read_table(tmp / f"{name}.parquet").column("embedding")
            if pa.types.is_fixed_size_binary(col.type):
                out = np.concatenate([np.frombuffer(c.buffers()[1], np.float32, len(c) * args.dim,
                                                    c.offset * 4 * args.dim) for c in col.chunks])
            else:
                out = col.combine_chunks().values.to_numpy(zero_copy_only=False)
            return out.reshape(-1, args.dim)
        return read

    store = ArtifactStore(str(tmp / "store"))
    run = begin(store, "embed_bench", "1", {}, inputs={})
    for sh in run.pending(args.rows, args.shard):
        run.commit(sh, embeddings_table(ids[sh.start:sh.stop], emb[sh.start:sh.stop]))
    art = run.finish()
    store_layout = str(art.read().schema.field("embedding").type)

    rows = [("npy", read_npy, (tmp / "e.npy").stat().st_size)]
    rows += [(n, reader(n), (tmp / f"{n}.parquet").stat().st_size) for n in layouts]
    rows.append((f"store ({store_layout})", lambda: art.embeddings()[1], sum(s.bytes for s in art.manifest.shards)))
    results = []
    for name, fn, size in rows:
        got = fn()
        if not np.array_equal(np.asarray(got), emb):
            print(f"{name}: read back differs", file=sys.stderr)
            return 1
        med, runs = timed(fn, args.repeats)
        results.append({"layout": name, "median_s": round(med, 4), "runs": [round(r, 4) for r in runs], "bytes": size})
    floor = results[0]["median_s"]
    print(f"{args.rows} x {args.dim} float32, row groups / shards of {args.shard}, median of {args.repeats}\n")
    print("| layout | median s | MB | npy s / layout s |")
    print("|---|---:|---:|---:|")
    for r in results:
        r["ratio"] = round(floor / r["median_s"], 3)
        print(f"| {r['layout']} | {r['median_s']} | {r['bytes'] / 1e6:.0f} | {r['ratio']} |")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(args.out or Path(__file__).with_name("results") / f"embeddings_read-{stamp}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": args.rows, "dim": args.dim, "shard": args.shard, "results": results,
                               "nproc": os.cpu_count(), "pyarrow": pa.__version__}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
