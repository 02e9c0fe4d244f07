"""`cirflow store ls | show KEY | verify [KEY] | head KEY | export KEY --to DIR | rm KEY | gc`: look into the
artifact store, copy an artifact out, remove one with what depends on it, collect what no run references
(cirflow.storage.gc)."""

from __future__ import annotations

import argparse
import json

from cirflow.schemas.errors import StoreError
from cirflow.storage import ArtifactStore, gc

DEFAULT_STORE = ".cirflow/store"
DEFAULT_RUNS = ".cirflow/runs"  # RunBase.output_dir's default
# the word a verify line starts with, per Problem.kind
LINE_WORDS = {"bad": "BAD", "unfinished": "UNFINISHED", "old-format": "OLD"}


def register(sub) -> None:
    p = sub.add_parser("store", help="list, show, verify, export and clean up stored artifacts")
    p.add_argument("--root", default=DEFAULT_STORE, help="store URL (any fsspec URL; default %(default)s)")
    ssub = p.add_subparsers(dest="store_command", required=True)
    ls = ssub.add_parser("ls", help="one line per artifact")
    ls.add_argument("--stage", help="only this stage")
    ls.add_argument("--json", action="store_true")
    show = ssub.add_parser("show", help="the manifest of one artifact")
    show.add_argument("key", help="key or unique key prefix")
    verify = ssub.add_parser("verify", help="check manifests, commit records, shards and indexed files; exit 1 "
                                            "naming every problem")
    verify.add_argument("key", nargs="?", help="only this artifact")
    head = ssub.add_parser("head", help="the first rows of one artifact's table")
    head.add_argument("key", help="key or unique key prefix")
    head.add_argument("-n", type=int, default=10, help="rows (default %(default)s)")
    head.add_argument("--table", default="data", help="which table (default %(default)s; `show` lists them)")
    head.add_argument("--json", action="store_true", help="rows as JSON lines")
    export = ssub.add_parser("export", help="copy one artifact (checksums verified) to <DIR>/<stage>/<key>/")
    export.add_argument("key", help="key or unique key prefix")
    export.add_argument("--to", required=True, help="destination folder or fsspec URL")
    rm = ssub.add_parser("rm", help="remove an artifact and every artifact computed from it")
    rm.add_argument("key", help="key or unique key prefix")
    rm.add_argument("--dry-run", action="store_true", help="only list what would be removed")
    collect = ssub.add_parser("gc", help="remove artifacts that no run folder references (nor their inputs)")
    collect.add_argument("--runs", action="append", metavar="DIR",
                         help=f"a root of run folders (their summary.json) or release folders (their README.md card) "
                              f"whose artifacts are kept (repeatable; default {DEFAULT_RUNS})")
    collect.add_argument("--dry-run", action="store_true", help="only list what would be removed")
    for cmd in (ls, show, verify, head, export, rm, collect):
        # `cirflow store ls --root X` as well as `cirflow store --root X ls`; SUPPRESS keeps the outer value
        # unless the option is given here
        cmd.add_argument("--root", default=argparse.SUPPRESS, help="store URL (also accepted before the command)")
    p.set_defaults(func=run)


def run(args) -> int:
    store = ArtifactStore(args.root)
    if args.store_command == "ls":
        store.check_root()
        rows = [m for m in store.manifests(indexed=True) if not args.stage or m.stage == args.stage]
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
        store.check_root()
        print(store.find(args.key).manifest.model_dump_json(indent=2))
        return 0
    if args.store_command in TOOLS:
        store.check_root()
        return TOOLS[args.store_command](store, args)
    problems = store.verify(args.key)
    if problems:
        for p in problems:
            print(f"{LINE_WORDS.get(p.kind, 'BAD')} {p}")
        counts = {k: sum(p.kind == k for p in problems) for k in LINE_WORDS}
        print(f"{counts['bad']} bad, {counts['unfinished']} unfinished, {counts['old-format']} older-format "
              "finding(s); rerun the stages that produced them to recompute")
        return 1
    n = 1 if args.key else len(store.artifact_dirs())
    print(f"ok: {n} artifact(s) verified")
    return 0


def _head(store: ArtifactStore, args) -> int:
    t = gc.head(store.find(args.key), args.table, max(args.n, 0))
    if args.json:
        for row in t.to_pylist():
            print(json.dumps(row, default=str))
    else:
        print(gc.format_rows(t))
    return 0


def _export(store: ArtifactStore, args) -> int:
    art = store.find(args.key)
    dest, n = gc.export(art, args.to)
    print(f"exported {art.stage}/{art.key[:12]}: {n} file(s) to {dest.artifact_dir(art.stage, art.key)} (verified)")
    return 0


def _removals(store: ArtifactStore, removals: list, dry_run: bool, counts: str = "") -> int:
    for r in removals:
        print(f"{'would remove' if dry_run else 'removed'} {r.stage}/{r.key[:12]}  ({r.reason})")
    if dry_run:
        print(f"{len(removals)} artifact(s) would be removed{counts}; rerun without --dry-run to remove them")
        return 0
    freed = gc.remove(store, removals)
    print(f"{len(removals)} artifact(s) removed, {freed / 2**20:.1f} MiB freed{counts}")
    return 0


def _rm(store: ArtifactStore, args) -> int:
    # print the plan before removing: an interrupted rm leaves dependents gone first, never dangling ones
    return _removals(store, gc.plan_rm(store, args.key), args.dry_run)


def _gc(store: ArtifactStore, args) -> int:
    removals, c = gc.plan_gc(store, args.runs or [DEFAULT_RUNS])
    if not c["reference_files"]:
        # no run folder found: everything would go, which is almost surely a wrong --runs
        raise StoreError(f"no summary.json under {', '.join(args.runs or [DEFAULT_RUNS])}: nothing references "
                         "any artifact; pass the run folders' root with --runs")
    return _removals(store, removals, args.dry_run,
                     f"; {c['kept']} kept, referenced by {c['reference_files']} run file(s)"
                     + (f"; {c['unfinished_left']} unfinished folder(s) left alone" if c["unfinished_left"] else ""))


TOOLS = {"head": _head, "export": _export, "rm": _rm, "gc": _gc}
