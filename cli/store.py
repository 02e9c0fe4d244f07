"""`cirflow store ls | show KEY | verify [KEY]`: look into the artifact store."""

from __future__ import annotations

import json

from cirflow.storage import ArtifactStore

DEFAULT_STORE = ".cirflow/store"


def register(sub) -> None:
    p = sub.add_parser("store", help="list, show and verify stored artifacts")
    p.add_argument("--root", default=DEFAULT_STORE, help="store URL (any fsspec URL; default %(default)s)")
    ssub = p.add_subparsers(dest="store_command", required=True)
    ls = ssub.add_parser("ls", help="one line per artifact")
    ls.add_argument("--stage", help="only this stage")
    ls.add_argument("--json", action="store_true")
    show = ssub.add_parser("show", help="the manifest of one artifact")
    show.add_argument("key", help="key or unique key prefix")
    verify = ssub.add_parser("verify", help="check every shard's checksum; exit 1 naming the bad ones")
    verify.add_argument("key", nargs="?", help="only this artifact")
    p.set_defaults(func=run)


def run(args) -> int:
    store = ArtifactStore(args.root)
    if args.store_command == "ls":
        rows = [m for m in store.manifests() if not args.stage or m.stage == args.stage]
        if args.json:
            print(json.dumps([{"stage": m.stage, "key": m.key, "rows": sum(s.rows for s in m.shards),
                               "files": len(m.files), "created_at": m.created_at} for m in rows], indent=2))
            return 0
        print(f"{'stage':<22} {'key':<14} {'rows':>9} {'shards':>6} {'files':>5}  created")
        for m in rows:
            print(f"{m.stage:<22} {m.key[:12]:<14} {sum(s.rows for s in m.shards):>9} {len(m.shards):>6} "
                  f"{len(m.files):>5}  {m.created_at}")
        return 0
    if args.store_command == "show":
        print(store.find(args.key).manifest.model_dump_json(indent=2))
        return 0
    problems = store.verify(args.key)
    if problems:
        for p in problems:
            print(f"BAD {p}")
        print(f"{len(problems)} bad shard(s)/file(s); rerun the stage that produced them to recompute")
        return 1
    n = 1 if args.key else sum(1 for _ in store.manifests())
    print(f"ok: {n} artifact(s) verified")
    return 0
