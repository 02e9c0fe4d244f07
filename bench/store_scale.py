"""Requests per `find` / `ls` on an S3 store of N artifacts: the key index (storage/index.py) vs the old scan.

Starts a local moto S3 server (as tests/test_store_s3.py does), writes N artifacts with the real StageRun to a
local store, uploads that tree to a bucket, then counts the HTTP requests s3fs sends (a botocore `before-send`
hook on the client, cross-checked against the moto server's request log) for:
  - old find: the pre-index `find` (list every stage folder, read every manifest, filter by prefix)
  - find (full key) / find (8-char prefix): through the index
  - ls: `manifests(indexed=True)` vs the scan `manifests()`; both must read every manifest, the difference is
    the listing
Prints a Markdown table; JSON to bench/results/store_scale-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto(log_path: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=open(log_path, "w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("moto_server did not start")


class RequestCounter:
    """Counts S3 operations an s3fs instance sends (botocore event hooks on its aiobotocore client)."""

    def __init__(self, fs):
        self.ops: Counter = Counter()
        fs.connect() if hasattr(fs, "connect") else None
        fs.s3.meta.events.register("before-call.s3", self._call)

    def _call(self, model=None, **_):
        self.ops[model.name] += 1

    def take(self) -> dict:
        out = dict(self.ops)
        self.ops.clear()
        return out


def moto_requests(log_path: Path) -> int:
    return sum('HTTP/1.1"' in line for line in log_path.read_text().splitlines())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifacts", type=int, default=1000)
    ap.add_argument("--stages", type=int, default=6)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench-secret", AWS_DEFAULT_REGION="us-east-1")

    import pyarrow as pa
    import s3fs

    from cirflow.storage import ArtifactStore, begin

    tmp = Path(tempfile.mkdtemp(prefix="store-scale-"))
    local = ArtifactStore(str(tmp / "store"))
    t0 = time.perf_counter()
    keys = []
    for i in range(args.artifacts):
        run = begin(local, f"stage{i % args.stages}", "1", {"i": i}, inputs={})
        for sh in run.pending(1, 1):
            run.commit(sh, pa.table({"x": [i]}))
        keys.append(run.finish().key)
    build_s = time.perf_counter() - t0

    log = tmp / "moto.log"
    proc, url = start_moto(log)
    try:
        opts = {"client_kwargs": {"endpoint_url": url}, "skip_instance_cache": True}
        up = s3fs.S3FileSystem(**opts)
        up.mkdir("bench-bucket")
        t0 = time.perf_counter()
        up.put(str(tmp / "store") + "/", "bench-bucket/store/", recursive=True)
        upload_s = time.perf_counter() - t0
        target = keys[len(keys) // 2]
        rows = []

        def measure(name, fn):
            store = ArtifactStore("s3://bench-bucket/store", opts)  # fresh fs: no listing cache
            counter = RequestCounter(store.fs)
            time.sleep(0.3)
            before = moto_requests(log)
            t = time.perf_counter()
            result = fn(store)
            seconds = time.perf_counter() - t
            time.sleep(0.5)  # let the server flush its log
            ops = counter.take()
            rows.append({"what": name, "requests": sum(ops.values()), "server_log": moto_requests(log) - before,
                         "ops": ops, "seconds": round(seconds, 3)})
            return result

        old = measure("old find (scan every manifest)",
                      lambda s: [m.key for m in s.manifests() if m.key.startswith(target)])
        new = measure("find, full key (index)", lambda s: s.find(target).key)
        pre = measure("find, 8-char prefix (index)", lambda s: s.find(target[:8]).key)
        ls_old = measure("ls, scan", lambda s: len(list(s.manifests())))
        ls_new = measure("ls, index", lambda s: len(list(s.manifests(indexed=True))))
        assert old == [target] and new == target and pre == target, (old, new, pre)
        assert ls_old == ls_new == args.artifacts, (ls_old, ls_new)
    finally:
        proc.terminate()
        proc.wait(timeout=10)

    print(f"{args.artifacts} artifacts in {args.stages} stages (built locally in {build_s:.1f} s, uploaded in "
          f"{upload_s:.1f} s)\n")
    print("| operation | S3 requests (client) | requests in moto's log | seconds | operations |")
    print("|---|---:|---:|---:|---|")
    for r in rows:
        ops = ", ".join(f"{k} {v}" for k, v in sorted(r["ops"].items()))
        print(f"| {r['what']} | {r['requests']} | {r['server_log']} | {r['seconds']} | {ops} |")
    ratio = rows[0]["requests"] / max(rows[1]["requests"], 1)
    print(f"\nold find / indexed find (requests) = {ratio:.0f}")
    out = Path(args.out or Path(__file__).with_name("results") / f"store_scale-{time.strftime('%Y%m%d-%H%M%S')}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"artifacts": args.artifacts, "stages": args.stages, "rows": rows,
                               "machine": {"nproc": os.cpu_count(), "python": platform.python_version()}}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
