"""The bad-input corpus (issue 9): every case in tests/data/bad_inputs/cases.yaml through the real CLI.

Each case must end in exactly one line `cirflow: error: ...` that contains the case's expected substrings (the
file, and the record/field where there is one), with the expected exit code, no traceback, and nothing
committed: no store manifest, no ingest.json, no run folder. Most cases run in-process through
`cirflow.cli.main.main` (an import per case would cost ~2 s on 2 cores); the ones marked `subprocess: true` run
`python -m cirflow.cli.main` as a user would, so the real entry point and its stderr are covered too.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from cirflow.cli.main import main
from cirflow.schemas.builds import CollectionSource
from cirflow.schemas.errors import ConfigError
from cirflow.tasks.builds.ingest_collection import list_collection

DATA = Path(__file__).resolve().parent / "data"
CORPUS = DATA / "bad_inputs"
SLICES = DATA / "benchmarks"
CASES = yaml.safe_load((CORPUS / "cases.yaml").read_text())["cases"]
OUTSIDE_FILES = ("secret.png", "secret.jpg")


def _prepare(case: dict, tmp_path: Path) -> list[str]:
    # the case folder sits two levels down so that an id climbing '../../..' out of it lands in <tmp>/outside,
    # where a real image waits: without containment it would be read (and, in a run, sent to the model)
    work = tmp_path / "work" / "data"
    shutil.copytree(CORPUS / case["id"], work)
    outside = tmp_path / "outside"
    outside.mkdir()
    for name in OUTSIDE_FILES:
        Image.new("RGB", (8, 8), (200, 0, 0)).save(outside / name)
    subs = {"{case}": str(work), "{tmp}": str(tmp_path), "{slices}": str(SLICES), "{corpus}": str(CORPUS)}
    for f in work.rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            new = data
            for k, v in subs.items():
                new = new.replace(k.encode(), v.encode())
            if new != data:
                f.write_bytes(new)
    out = []
    for a in case["argv"]:
        for k, v in subs.items():
            a = a.replace(k, v)
        out.append(a)
    return out


def _run(case: dict, argv: list[str], tmp_path: Path, capsys) -> tuple[int, str, str]:
    if case.get("subprocess"):
        env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")
        p = subprocess.run([sys.executable, "-m", "cirflow.cli.main", *argv], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=300)
        return p.returncode, p.stdout, p.stderr
    try:
        code = main(argv)
    except SystemExit as e:  # argparse: counted as unclear below (its line is not `cirflow: error:`)
        code = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def _committed(tmp_path: Path) -> list[str]:
    """Anything a failed command must not have left: artifacts, ingest output, run folders, outside writes."""
    left = [str(p) for p in tmp_path.rglob("_manifest.json")]
    left += [str(p) for p in tmp_path.rglob("ingest.json")]
    left += [str(p) for p in tmp_path.rglob("summary.json")]
    left += [str(p) for p in (tmp_path / "outside").iterdir() if p.name not in OUTSIDE_FILES]
    left += [str(p) for p in tmp_path.iterdir() if p.name not in ("work", "outside", "store", "out", "runs")]
    return left


def test_corpus_size():
    assert len(CASES) >= 100
    assert len({c["id"] for c in CASES}) == len(CASES)
    folders = {p.name for p in CORPUS.iterdir() if p.is_dir() and not p.name.startswith("_")}
    assert folders == {c["id"] for c in CASES}  # no stale or undeclared case folders
    assert sum(bool(c.get("subprocess")) for c in CASES) >= 5


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_bad_input_is_one_clear_line(case, tmp_path, capsys):
    argv = _prepare(case, tmp_path)
    code, out, err = _run(case, argv, tmp_path, capsys)
    assert "Traceback" not in out + err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("cirflow: error: "), err
    missing = [s for s in case["expect"] if s not in lines[0]]
    assert not missing, f"{lines[0]!r} lacks {missing}"
    assert code == case["exit"], (code, lines[0])
    assert not _committed(tmp_path), _committed(tmp_path)


# ------------------------------------------------------------------------------ collections (build inputs)


def _images(root: Path, names: list[str]) -> None:
    for n in names:
        (root / n).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (0, 0, 200)).save(root / n)


def test_collection_list_entries_stay_under_their_folder(tmp_path):
    coll = tmp_path / "coll"
    _images(coll, ["a.png", "sub/b.png"])
    _images(tmp_path, ["secret.png"])
    lst = coll / "list.txt"
    lst.write_text("a.png\nsub/b.png\n")
    entries, _, _ = list_collection(CollectionSource(kind="list", uri=str(lst)))
    assert [e["relpath"] for e in entries] == ["a.png", "sub/b.png"]
    lst.write_text("a.png\n../secret.png\n")
    with pytest.raises(ConfigError, match=r"list\.txt: line 2: path '\.\./secret\.png' climbs"):
        list_collection(CollectionSource(kind="list", uri=str(lst)))
    lst.write_text(f"{coll}/sub/../../secret.png\n")
    with pytest.raises(ConfigError, match="line 1"):
        list_collection(CollectionSource(kind="list", uri=str(lst)))


def test_collection_parquet_rows_stay_under_their_folder(tmp_path):
    coll = tmp_path / "coll"
    _images(coll, ["a.png"])
    _images(tmp_path, ["secret.png"])
    pq.write_table(pa.table({"path": ["a.png", "x/../../secret.png"]}), coll / "index.parquet")
    with pytest.raises(ConfigError, match=r"index\.parquet: row 1, column 'path'"):
        list_collection(CollectionSource(kind="parquet", uri=str(coll / "index.parquet")))
