"""Generated images as one object each vs. Parquet side-table shards: writes, reads, objects and S3 requests.

One process, N seeded small PNGs (default 2,000 of 64x64 noise, ~12 KB each), written through the real
`StageRun` the way synthesize_images writes them, in shards of --shard images, then read back in index order:
  objects   one object per image (`StageRun.write_blob`) + a GENERATED_IMAGES-like index shard per shard
            (what synthesize_images / synthesize_proxies wrote before issue 14)
  parquet   the images in an `images` side-table shard (binary column) beside each index shard
            (storage/item_files.py; what they write now)
Read back = the index table plus every image through `ItemFiles.read` (objects: each checked against its
sha256; parquet: each shard checked against the manifest). Every image read back must equal what was written.
Targets: a local folder, and (unless --no-s3) a local moto S3 server as tests/test_store_s3.py starts it, where
the S3 operations s3fs sends are counted (botocore hook, as bench/store_scale.py). JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))

INDEX = pa.schema([("id", pa.string()), ("sample", pa.int32()), ("file", pa.string()), ("sha256", pa.string())])


def pngs(n: int, size: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def write(store, layout: str, images: list[bytes], shard_size: int):
    from cirflow.storage import begin
    from cirflow.storage.item_files import ITEM_TABLE, item_table
    from cirflow.storage.stage_run import Shard
    from cirflow.storage.store import sha256_bytes

    run = begin(store, f"images_{layout}", "1", {"n": len(images)}, inputs={})
    for sh in run.pending(len(images), shard_size):
        rows, side = [], []
        for i in range(sh.start, sh.stop):
            if layout == "objects":
                sha, _ = run.write_blob(f"images/{i:07d}.png", images[i])
                rows.append({"id": f"q{i}", "sample": 0, "file": f"images/{i:07d}.png", "sha256": sha})
            else:
                side.append((f"q{i}", 0, images[i]))
                rows.append({"id": f"q{i}", "sample": 0, "file": None, "sha256": sha256_bytes(images[i])})
        if layout == "parquet":
            run.commit(Shard(ITEM_TABLE, sh.index, sh.start, sh.stop), item_table(side))
        run.commit(sh, pa.Table.from_pylist(rows, schema=INDEX))
    return run.finish()


def read_all(store, stage: str, key: str) -> list[bytes]:
    from cirflow.storage.item_files import ItemFiles

    art = store.open(stage, key)
    files = ItemFiles(art)
    return [files.read(r) for r in art.read().to_pylist()]


def run_target(name: str, make_store, images: list[bytes], shard_size: int, counter_for=None) -> list[dict]:
    rows = []
    for layout in ("objects", "parquet"):
        # one bucket / folder per layout: moto's listings slow down with the number of objects in a bucket
        make = lambda: make_store(layout)  # noqa: E731
        store = make()
        counter = counter_for(store.fs) if counter_for else None
        t = time.perf_counter()
        art = write(store, layout, images, shard_size)
        write_s = time.perf_counter() - t
        write_ops = counter.take() if counter else {}
        base = store.artifact_dir(art.stage, art.key)
        objects = len(store.fs.find(base))
        nbytes = sum(store.fs.du(base, total=False).values())
        store = make()  # fresh filesystem: no cache from the writes
        counter = counter_for(store.fs) if counter_for else None
        t = time.perf_counter()
        got = read_all(store, art.stage, art.key)
        read_s = time.perf_counter() - t
        read_ops = counter.take() if counter else {}
        if got != images:
            raise SystemExit(f"{name} {layout}: images read back differ")
        rows.append({"target": name, "layout": layout, "write_s": round(write_s, 3), "read_s": round(read_s, 3),
                     "objects": objects, "bytes": int(nbytes), "write_requests": sum(write_ops.values()),
                     "read_requests": sum(read_ops.values()), "write_ops": write_ops, "read_ops": read_ops})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--size", type=int, default=64, help="PNG width = height")
    ap.add_argument("--shard", type=int, default=16, help="images per shard (synthesize_images' default)")
    ap.add_argument("--no-s3", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench-secret", AWS_DEFAULT_REGION="us-east-1")

    from cirflow.storage import ArtifactStore

    images = pngs(args.images, args.size)
    tmp = Path(tempfile.mkdtemp(prefix="image-blobs-"))
    rows = run_target("local", lambda layout: ArtifactStore(str(tmp / layout)), images, args.shard)
    if not args.no_s3:
        import s3fs

        from store_scale import RequestCounter, start_moto

        proc, url = start_moto(tmp / "moto.log")
        try:
            opts = {"client_kwargs": {"endpoint_url": url}, "skip_instance_cache": True}
            for layout in ("objects", "parquet"):
                s3fs.S3FileSystem(**opts).mkdir(f"bench-{layout}")
            rows += run_target("moto S3", lambda layout: ArtifactStore(f"s3://bench-{layout}/store", opts), images,
                               args.shard, RequestCounter)
        finally:
            proc.terminate()
            proc.wait(timeout=10)

    mb = sum(map(len, images)) / 1e6
    print(f"{args.images} PNGs of {args.size}x{args.size} ({mb:.1f} MB), shards of {args.shard}\n")
    print("| target | layout | objects | MB stored | write s | read s | S3 requests write | S3 requests read |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        s3 = r["target"] != "local"
        print(f"| {r['target']} | {r['layout']} | {r['objects']} | {r['bytes'] / 1e6:.1f} | {r['write_s']} | "
              f"{r['read_s']} | {r['write_requests'] if s3 else '-'} | {r['read_requests'] if s3 else '-'} |")
    for r in rows:
        if r["write_ops"]:
            print(f"\n{r['target']} {r['layout']}: write {r['write_ops']}; read {r['read_ops']}")
    out = Path(args.out or Path(__file__).with_name("results") / f"image_blobs-{time.strftime('%Y%m%d-%H%M%S')}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"images": args.images, "size": args.size, "shard": args.shard, "rows": rows,
                               "machine": {"nproc": os.cpu_count(), "python": platform.python_version(),
                                           "load": os.getloadavg()}}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
