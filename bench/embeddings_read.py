"""Reading an embedding matrix back: raw .npy against the Parquet layouts an embeddings shard could use.

One process, the same seeded float32 matrix (default CIRCO gallery shape 123,403 x 512) written once per layout
to a temporary folder, then read from page cache (1 warm-up, median of --repeats) into a float32 numpy array:
  npy                      np.load                                      (the floor)
  fsl zstd                 fixed_size_list<float32>, zstd               (what the store wrote before issue 14)
  fsl none                 fixed_size_list<float32>, uncompressed
  fsl bss zstd             fixed_size_list<float32>, BYTE_STREAM_SPLIT + zstd
  fsb zstd / fsb none      fixed_size_binary(4*dim) column, zstd / uncompressed
  fsb none plain           the same uncompressed, no dictionary, no min/max statistics, one data page per row
                           group (what the store writes)
  store                    the layout cirflow writes now, read by `Artifact.embeddings()` (its per-read XXH3-128
                           check included; `store old` = the same shards with records written before XXH3, sha256)
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


def timed(fn, repeats: int) -> tuple[float, list[float], float]:
    """Median wall seconds, every run's, and the median CPU seconds of the process (all threads): on a shared box
    the CPU time says what a read costs when wall time mostly says how loaded the machine was."""
    fn()
    runs, cpu = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        fn()
        runs.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return statistics.median(runs), runs, statistics.median(cpu)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=123_403)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--shard", type=int, default=4096, help="rows per row group / store shard")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from cirflow.storage import ArtifactStore, begin
    from cirflow.storage.store import Artifact
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
        "fsb none plain": (fsb, dict(compression="none", use_dictionary=False, write_statistics=False,
                                     data_page_size=1 << 28)),
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

    load = os.getloadavg()
    rows = [("npy", read_npy, (tmp / "e.npy").stat().st_size)]
    rows += [(n, reader(n), (tmp / f"{n}.parquet").stat().st_size) for n in layouts]
    rows.append((f"store ({store_layout})", lambda: art.embeddings()[1], sum(s.bytes for s in art.manifest.shards)))
    # the same artifact as a reader sees one written before XXH3 was recorded: each shard checked by sha256
    old = Artifact(store, art.manifest.model_copy(
        update={"shards": [s.model_copy(update={"xxh3_128": None}) for s in art.manifest.shards]}))
    rows.append(("store old records (sha256 check)", lambda: old.embeddings()[1],
                 sum(s.bytes for s in art.manifest.shards)))
    results = []
    for name, fn, size in rows:
        got = fn()
        if not np.array_equal(np.asarray(got), emb):
            print(f"{name}: read back differs", file=sys.stderr)
            return 1
        med, runs, cpu = timed(fn, args.repeats)
        results.append({"layout": name, "median_s": round(med, 4), "runs": [round(r, 4) for r in runs], "bytes": size,
                        "cpu_s": round(cpu, 4)})
    floor, floor_cpu = results[0]["median_s"], results[0]["cpu_s"]
    print(f"{args.rows} x {args.dim} float32, row groups / shards of {args.shard}, median of {args.repeats}\n")
    print(f"load average before: {load[0]:.1f}, after: {os.getloadavg()[0]:.1f}\n")
    print("| layout | median s | MB | npy s / layout s | CPU s | npy CPU / layout CPU |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in results:
        r["ratio"] = round(floor / r["median_s"], 3)
        r["cpu_ratio"] = round(floor_cpu / r["cpu_s"], 3) if r["cpu_s"] else None
        print(f"| {r['layout']} | {r['median_s']} | {r['bytes'] / 1e6:.0f} | {r['ratio']} | {r['cpu_s']} | "
              f"{r['cpu_ratio']} |")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(args.out or Path(__file__).with_name("results") / f"embeddings_read-{stamp}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": args.rows, "dim": args.dim, "shard": args.shard, "results": results,
                               "nproc": os.cpu_count(), "pyarrow": pa.__version__,
                               "load_average": [load[0], os.getloadavg()[0]]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
