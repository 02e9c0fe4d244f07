"""`cirflow store verify` catches every corruption kind the adversarial probe of issue 9 used (12 of 12), each
as one line and a non-zero exit, never a traceback; `run` (StageRun) treats an unreadable, garbage or
older-format manifest as unfinished and recomputes, keeping the good shards."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pytest
from PIL import Image

from cirflow.cli.main import main
from cirflow.schemas.tables import GENERATED_IMAGES
from cirflow.storage import ArtifactStore, begin
from cirflow.storage.manifest import MANIFEST

N, SHARD = 6, 2


def _png(i: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (i * 40 % 256, 10, 200)).save(buf, format="PNG")
    return buf.getvalue()


def _stage(store: ArtifactStore):
    """A generating stage as synthesize_images writes one: PNG blobs first, then the GENERATED_IMAGES shard."""
    run = begin(store, "toy_images", "1", {"a": 1}, inputs={}, schemas={"data": GENERATED_IMAGES})
    for s in run.pending(N, SHARD):
        rows = []
        for i in range(s.start, s.stop):
            sha, _ = run.write_blob(f"images/{i}.png", _png(i))
            rows.append({"id": str(i), "sample": 0, "file": f"images/{i}.png", "sha256": sha, "width": 8,
                         "height": 8, "seed": i, "prompt": "p", "status": "ok", "error": None, "seconds": 0.0})
        run.commit(s, pa.Table.from_pylist(rows, schema=GENERATED_IMAGES))
    return run, run.finish(stats={"n": N})


def _flip(path: Path, at: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    at = len(data) // 2 if at is None else at
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def _unreadable(path: Path) -> None:
    # tests run as root, which chmod 000 does not stop: a folder where the file should be cannot be read by anyone
    path.unlink()
    path.mkdir()
    (path / "x").write_text("x")


CORRUPTIONS = {
    "deleted manifest": (lambda d: (d / MANIFEST).unlink(), "UNFINISHED", "no manifest"),
    "garbage manifest": (lambda d: (d / MANIFEST).write_text("{not json"), "BAD", "garbage manifest"),
    "garbage in _commits": (lambda d: (d / "_commits" / "data-00001.parquet.json").write_text('{"x": 1}'), "BAD",
                            "garbage commit record"),
    "deleted shard": (lambda d: (d / "data-00001.parquet").unlink(), "BAD", "missing"),
    "truncated shard": (lambda d: (d / "data-00001.parquet").write_bytes((d / "data-00001.parquet").read_bytes()[:50]),
                        "BAD", "checksum mismatch"),
    "bit-flipped shard": (lambda d: _flip(d / "data-00001.parquet"), "BAD", "checksum mismatch"),
    "deleted generated PNG": (lambda d: (d / "images" / "3.png").unlink(), "BAD", "missing"),
    "bit-flipped PNG": (lambda d: _flip(d / "images" / "3.png", at=40), "BAD", "checksum mismatch"),
    "unreadable shard": (lambda d: _unreadable(d / "data-00001.parquet"), "BAD", "unreadable"),
    "unreadable manifest": (lambda d: _unreadable(d / MANIFEST), "BAD", "unreadable"),
}


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_verify_names_each_corruption_in_one_line(tmp_path, capsys, kind):
    store = ArtifactStore(str(tmp_path))
    _, art = _stage(store)
    assert main(["store", "verify", "--root", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == "ok: 1 artifact(s) verified"
    corrupt, word, reason = CORRUPTIONS[kind]
    corrupt(Path(art.file_path(MANIFEST)).parent)
    assert main(["store", "verify", "--root", str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    bad = [line for line in out.splitlines() if line.startswith(("BAD", "UNFINISHED", "OLD"))]
    assert len(bad) == 1 and bad[0].startswith(word) and reason in bad[0], out
    assert "Traceback" not in out + err


@pytest.mark.parametrize("kind", ["missing root", "root is a file", "not a store"])
def test_a_root_that_is_not_a_store_is_one_error_line(tmp_path, capsys, kind):
    root = tmp_path / "nowhere"
    if kind == "root is a file":
        root.write_text("x")
    elif kind == "not a store":
        root.mkdir()
        (root / "Notes.TXT").write_text("x")
    for cmd in (["verify"], ["ls"], ["show", "abc"]):
        assert main(["store", *cmd, "--root", str(root)]) == 1
        err = capsys.readouterr().err
        assert err.startswith("cirflow: error: ") and len(err.strip().splitlines()) == 1, err
        assert ("does not exist", "is a file", "not an artifact store")[
            ["missing root", "root is a file", "not a store"].index(kind)] in err


@pytest.mark.parametrize("kind", ["garbage manifest", "unreadable manifest", "deleted manifest",
                                  "bit-flipped shard", "unreadable shard"])
def test_run_recomputes_what_is_bad_and_keeps_good_shards(tmp_path, kind):
    store = ArtifactStore(str(tmp_path))
    _, art = _stage(store)
    CORRUPTIONS[kind][0](Path(art.file_path(MANIFEST)).parent)
    if kind == "unreadable shard":
        shutil.rmtree(art.file_path("data-00001.parquet"))  # a rerun replaces a file, not a folder in its place
    run, again = _stage(store)
    redone = 0 if "manifest" in kind else 1
    assert (run.report.status, run.report.shards_computed, run.report.shards_skipped) == ("resumed", redone, 3 - redone)
    assert again.read().equals(art.read())
    assert store.verify() == []


def test_a_finished_artifact_with_a_garbage_commit_record_stays_readable(tmp_path):
    # the manifest, not the commit records, describes a finished artifact: it is still cached and intact, and
    # verify names the record (its line says the artifact itself is fine)
    store = ArtifactStore(str(tmp_path))
    _, art = _stage(store)
    CORRUPTIONS["garbage in _commits"][0](Path(art.file_path(MANIFEST)).parent)
    run, again = _stage(store)
    assert run.report.status == "cached" and again.read().equals(art.read())
    assert [p.name for p in store.verify()] == ["_commits/data-00001.parquet.json"]


def test_older_store_format_is_named_and_never_cached(tmp_path, capsys):
    store = ArtifactStore(str(tmp_path))
    _, art = _stage(store)
    path = Path(art.file_path(MANIFEST))
    doc = json.loads(path.read_text())
    doc.pop("store_format")  # how every manifest before format 2 looks
    path.write_text(json.dumps(doc))
    assert main(["store", "verify", "--root", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "OLD toy_images/" in out and "written by an older store format (1), recompute or migrate" in out
    run, again = _stage(store)
    assert run.report.status == "resumed"  # not "cached": the shards were checked again, the manifest rewritten
    assert again.manifest.store_format == 2 and store.verify() == []


def test_root_option_after_the_store_command(tmp_path, capsys):
    store = ArtifactStore(str(tmp_path))
    _, art = _stage(store)
    assert main(["store", "ls", "--root", str(tmp_path), "--json"]) == 0
    assert [r["key"] for r in json.loads(capsys.readouterr().out)] == [art.key]
    assert main(["store", "--root", str(tmp_path), "ls", "--json"]) == 0  # the old spelling still works
    assert [r["key"] for r in json.loads(capsys.readouterr().out)] == [art.key]
    assert main(["store", "show", art.key[:8], "--root", str(tmp_path)]) == 0
    assert json.loads(capsys.readouterr().out)["store_format"] == 2
