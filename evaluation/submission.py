"""Submission files: RANKINGS -> per-benchmark dicts, writing/reading them, and validating them.

Formats (metrics-and-methods.md A):
- CIRR: two files, ``{"version": "rc2", "metric": "recall", "<pairid>": [50 names]}`` and
  ``{"version": "rc2", "metric": "recall_subset", "<pairid>": [3 names]}``; < 5 MB each.
- CIRCO: ``{"<query id>": [50 COCO ids as ints]}`` (strings accepted on read).
- Fashion-IQ: ``{"<index in caption file>": [>= 50 ASINs]}``, one file per category.
- GeneCIS: ``{"<sample index>": [candidate positions as ints, 0 = target]}``, full order or top 3, per task.

Validation needs no ground truth, so the same call checks a test-split upload before it is sent.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from cirflow.evaluation import circo, cirr, fashioniq, genecis
from cirflow.schemas.errors import CirflowError, ConfigError

BENCHMARKS = ("cirr", "circo", "fashioniq", "genecis")
_ALIASES = {"fiq": "fashioniq", "fashion-iq": "fashioniq", "fashion_iq": "fashioniq"}
CIRR_SIZE_LIMIT = 5_000_000  # bytes; the CIRR server's "5 MB" read conservatively (not 5 MiB)
_SHOWN = 5  # ids quoted in a "first: ..." list


class InvalidSubmissionError(CirflowError):
    """A predictions file does not match its benchmark's submission format; lists the first problems."""

    exit_code = 2

    def __init__(self, source: str, problems: Sequence[str], shown: int = 3):
        self.problems = list(problems)
        first = "; ".join(self.problems[:shown])
        more = f" (and {len(self.problems) - shown} more)" if len(self.problems) > shown else ""
        n = len(self.problems)
        super().__init__(f"{source}: {n} problem{'s' if n != 1 else ''} in the submission: {first}{more}")


def canonical_benchmark(name: str) -> str:
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in BENCHMARKS:
        raise ConfigError(f"unknown benchmark '{name}'; expected one of {', '.join(BENCHMARKS)}")
    return key


# ---------------------------------------------------------------------------------------------- building


def rankings_to_submission(
    benchmark: str, rankings: pa.Table, queries: pa.Table, *, group: str | None = None
) -> dict[str, dict]:
    """Named submission dicts from a RANKINGS table, in ``queries`` order.

    CIRR -> {"recall": ..., "recall_subset": ...} (the subset file only when ``subset_ids`` were ranked);
    CIRCO -> {"circo": ...}; Fashion-IQ / GeneCIS -> {group: ...} where ``group`` is the category / task
    (default: the benchmark name). CIRR/CIRCO lists are cut to the top 50 (subset: 3); GeneCIS positions
    become ints. Rankings are taken as given: CIRR ``ranked_ids`` must already exclude the reference.
    """
    benchmark = canonical_benchmark(benchmark)
    order = queries.column("query_id").to_pylist()
    known = set(order)
    ranked: dict[str, list[str]] = {}
    subset: dict[str, list[str]] = {}
    subset_col = rankings.column("subset_ids").to_pylist() if "subset_ids" in rankings.column_names else None
    for i, (qid, ids) in enumerate(zip(rankings.column("query_id").to_pylist(), rankings.column("ranked_ids").to_pylist())):
        if qid not in known:
            raise CirflowError(f"rankings hold query '{qid}', which is not in the {benchmark} queries given")
        if qid in ranked:
            raise CirflowError(f"rankings hold query '{qid}' twice")
        ranked[qid] = list(ids)
        if subset_col is not None and subset_col[i]:
            subset[qid] = list(subset_col[i])
    present = [q for q in order if q in ranked]  # missing queries are left for validation to report

    if benchmark == "cirr":
        files = {"recall": _cirr_header("recall") | {q: ranked[q][: cirr.TOP_K] for q in present}}
        if subset:
            files["recall_subset"] = _cirr_header("recall_subset") | {
                q: subset.get(q, [])[: cirr.SUBSET_TOP_K] for q in present
            }
        return files
    if benchmark == "circo":
        # the server's example files use integer ids; QUERIES/RANKINGS keep them as strings
        return {"circo": {q: [int(x) for x in ranked[q][: circo.TOP_K]] for q in present}}
    if benchmark == "fashioniq":
        return {group or "fashioniq": {q: ranked[q] for q in present}}
    return {group or "genecis": {q: [int(p) for p in ranked[q]] for q in present}}


def _cirr_header(metric: str) -> dict[str, str]:
    return {"version": cirr.VERSION, "metric": metric}


# ------------------------------------------------------------------------------------------ reading/writing


def write_submission(benchmark: str, files: Mapping[str, Mapping], out_dir: str | Path, name: str) -> list[Path]:
    """Write each named file as ``<out_dir>/<file key>_<name>.json`` (sort_keys); return the paths.

    CIRR gives ``recall_<name>.json`` and ``recall_subset_<name>.json``: two distinct files, and each
    file's "metric" field must equal its key, so the recall file can neither be overwritten by nor swapped
    with the subset file (the LDRE writer wrote both to one name).
    """
    benchmark = canonical_benchmark(benchmark)
    if not name or "/" in name or "\\" in name:
        raise ConfigError(f"submission name '{name}' must be a plain file-name part")
    if benchmark == "cirr":
        for key, content in files.items():
            if key not in ("recall", "recall_subset"):
                raise ConfigError(f"CIRR submission files are 'recall' and 'recall_subset', not '{key}'")
            if content.get("metric") != key:
                raise ConfigError(f"CIRR file '{key}' has metric {content.get('metric')!r}; expected '{key}'")
    out = Path(out_dir)
    paths = [out / f"{key}_{name}.json" for key in files]
    if len(set(paths)) != len(paths):
        raise ConfigError(f"submission files would overwrite each other: {[str(p) for p in paths]}")
    out.mkdir(parents=True, exist_ok=True)
    for path, content in zip(paths, files.values()):
        with open(path, "w", encoding="utf-8") as f:
            json.dump(content, f, sort_keys=True)
    return paths


def read_submission(path: str | Path) -> dict[str, Any]:
    """Load a submission file; a clear error if it is missing, not JSON, or not a JSON object."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f, object_pairs_hook=_no_duplicate_keys)
    except FileNotFoundError:
        raise InvalidSubmissionError(str(path), ["file not found"]) from None
    except IsADirectoryError:
        raise InvalidSubmissionError(str(path), ["is a folder, not a file"]) from None
    except _DuplicateKey as e:
        raise InvalidSubmissionError(str(path), [f"key {e.key!r} appears more than once"]) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidSubmissionError(str(path), [f"not valid JSON ({e})"]) from None
    if not isinstance(data, dict):
        raise InvalidSubmissionError(str(path), [f"expected a JSON object, got {type(data).__name__}"])
    return data


class _DuplicateKey(ValueError):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json's default keeps the last of two equal keys: a query listed twice would be scored on one silent choice
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(k)
        out[k] = v
    return out


def file_size_problems(benchmark: str, path: str | Path) -> list[str]:
    """The CIRR server's size limit applied to the file as it lies on disk (indentation counts)."""
    if canonical_benchmark(benchmark) != "cirr":
        return []
    size = Path(path).stat().st_size
    return [f"{Path(path).name} is {size} bytes; the CIRR server accepts < {CIRR_SIZE_LIMIT}"] if size >= CIRR_SIZE_LIMIT else []


# ------------------------------------------------------------------------------------------------ validation


def validate_submission(
    benchmark: str,
    queries: pa.Table,
    predictions: Mapping[str, Any],
    subset_predictions: Mapping[str, Any] | None = None,
    *,
    gallery_ids: Iterable[str] | None = None,
) -> list[str]:
    """Problems of a submission against a QUERIES table (empty list = valid). Needs no ground truth.

    Checks: every query id present and no other keys; list lengths (CIRR/CIRCO exactly 50, Fashion-IQ >= 50,
    GeneCIS the top 3 or the full order); no duplicates; entry types; ids within ``gallery_ids`` when given;
    CIRR: "version"/"metric" keys, no reference in the lists, subset lists = 3 of the non-reference
    members, serialised size < 5 MB.
    """
    benchmark = canonical_benchmark(benchmark)
    gallery = None if gallery_ids is None else {str(g) for g in gallery_ids}
    if not isinstance(predictions, Mapping):
        return [f"predictions must be a JSON object, got {type(predictions).__name__}"]
    if benchmark == "cirr":
        problems = _validate_cirr_recall(queries, predictions, gallery)
        if subset_predictions is not None:
            problems += _validate_cirr_subset(queries, subset_predictions)
        return problems
    if benchmark == "circo":
        return _validate_lists(queries, predictions, _int_entry, exact=circo.TOP_K, gallery=gallery)
    if benchmark == "fashioniq":
        return _validate_lists(queries, predictions, _name_entry, minimum=fashioniq.MIN_LIST, gallery=gallery)
    return _validate_genecis(queries, predictions)


def ensure_valid(benchmark: str, queries: pa.Table, predictions, subset_predictions=None, *, gallery_ids=None, source="submission") -> None:
    """``validate_submission`` that raises ``InvalidSubmissionError`` (exit code 2) on any problem."""
    problems = validate_submission(benchmark, queries, predictions, subset_predictions, gallery_ids=gallery_ids)
    if problems:
        raise InvalidSubmissionError(source, problems)


def _first(ids: Iterable) -> str:
    ids = list(ids)
    return ", ".join(map(str, ids[:_SHOWN])) + (", ..." if len(ids) > _SHOWN else "")


def _key_problems(query_ids: Sequence[str], keys: Iterable, meta_keys: Sequence[str] = (), what: str = "") -> list[str]:
    keys = [str(k) for k in keys if k not in meta_keys]
    have = set(keys)
    missing = [q for q in query_ids if q not in have]
    wanted = set(query_ids)
    extra = [k for k in keys if k not in wanted]
    out = []
    if missing:
        out.append(f"{what}missing {len(missing)} of {len(query_ids)} query ids (first: {_first(missing)})")
    if extra:
        out.append(f"{what}{len(extra)} keys are not query ids of this split (first: {_first(extra)})")
    return out


def _name_entry(x: Any) -> str | None:
    return x if isinstance(x, str) else None


def _int_entry(x: Any) -> str | None:
    # bool is an int subclass; a JSON true/false is never an id
    if isinstance(x, int) and not isinstance(x, bool):
        return str(x)
    if isinstance(x, str) and x.isdigit():
        return str(int(x))
    return None


def _entries(qid: str, value: Any, parse, what: str) -> tuple[list[str] | None, list[str]]:
    """Parsed entries of one list, or None plus the problem when it is not a list of the right type."""
    if not isinstance(value, list):
        return None, [f"{what}query {qid}: expected a list, got {type(value).__name__}"]
    parsed = [parse(x) for x in value]
    bad = [x for x, p in zip(value, parsed) if p is None]
    if bad:
        return None, [f"{what}query {qid}: {len(bad)} entries of the wrong type (first: {_first(map(repr, bad))})"]
    return parsed, []


def _length_and_duplicates(qid: str, parsed: list[str], exact=None, minimum=None, maximum=None, what="") -> list[str]:
    out = []
    n = len(parsed)
    if exact is not None and n != exact:
        out.append(f"{what}query {qid}: {n} entries, expected {exact}")
    if minimum is not None and n < minimum:
        out.append(f"{what}query {qid}: {n} entries, expected at least {minimum}")
    if maximum is not None and n > maximum:
        out.append(f"{what}query {qid}: {n} entries, expected at most {maximum}")
    if len(set(parsed)) != n:
        dups = sorted({x for x in parsed if parsed.count(x) > 1})
        out.append(f"{what}query {qid}: duplicate entries ({_first(dups)})")
    return out


def _validate_lists(queries, predictions, parse, *, exact=None, minimum=None, gallery=None, meta_keys=(), what="", exclude=None):
    query_ids = queries.column("query_id").to_pylist()
    problems = _key_problems(query_ids, predictions.keys(), meta_keys, what)
    preds = {str(k): v for k, v in predictions.items() if k not in meta_keys}
    for row, qid in enumerate(query_ids):
        if qid not in preds:
            continue
        parsed, errs = _entries(qid, preds[qid], parse, what)
        problems += errs
        if parsed is None:
            continue
        problems += _length_and_duplicates(qid, parsed, exact=exact, minimum=minimum, what=what)
        if gallery is not None:
            unknown = [x for x in parsed if x not in gallery]
            if unknown:
                problems.append(f"{what}query {qid}: {len(unknown)} ids not in the gallery (first: {_first(unknown)})")
        if exclude is not None and exclude[row] in parsed:
            problems.append(f"{what}query {qid}: contains the reference image {exclude[row]}")
    return problems


def _meta_problems(predictions: Mapping, metric: str, what: str) -> list[str]:
    out = []
    if predictions.get("version") != cirr.VERSION:
        out.append(f"{what}\"version\" must be \"{cirr.VERSION}\", got {predictions.get('version')!r}")
    if predictions.get("metric") != metric:
        out.append(f"{what}\"metric\" must be \"{metric}\", got {predictions.get('metric')!r}")
    size = len(json.dumps(predictions, sort_keys=True).encode("utf-8"))
    if size >= CIRR_SIZE_LIMIT:
        out.append(f"{what}serialised size {size} bytes; the CIRR server accepts < {CIRR_SIZE_LIMIT}")
    return out


def _validate_cirr_recall(queries, predictions, gallery) -> list[str]:
    what = "recall file: "
    problems = _meta_problems(predictions, "recall", what)
    references = queries.column("reference_id").to_pylist()
    return problems + _validate_lists(
        queries, predictions, _name_entry, exact=cirr.TOP_K, gallery=gallery,
        meta_keys=cirr.META_KEYS, what=what, exclude=references,
    )


def _validate_cirr_subset(queries, predictions) -> list[str]:
    what = "recall_subset file: "
    if not isinstance(predictions, Mapping):
        return [f"{what}must be a JSON object, got {type(predictions).__name__}"]
    problems = _meta_problems(predictions, "recall_subset", what)
    query_ids = queries.column("query_id").to_pylist()
    problems += _key_problems(query_ids, predictions.keys(), cirr.META_KEYS, what)
    preds = {str(k): v for k, v in predictions.items() if k not in cirr.META_KEYS}
    references = queries.column("reference_id").to_pylist()
    members = queries.column("members").to_pylist()
    for qid, ref, group in zip(query_ids, references, members):
        if qid not in preds:
            continue
        parsed, errs = _entries(qid, preds[qid], _name_entry, what)
        problems += errs
        if parsed is None:
            continue
        problems += _length_and_duplicates(qid, parsed, exact=cirr.SUBSET_TOP_K, what=what)
        if ref in parsed:
            problems.append(f"{what}query {qid}: contains the reference image {ref}")
        allowed = set(group or []) - {ref}
        outside = [x for x in parsed if x != ref and x not in allowed]
        if outside:
            problems.append(f"{what}query {qid}: not img_set members ({_first(outside)})")
    return problems


def _validate_genecis(queries, predictions) -> list[str]:
    query_ids = queries.column("query_id").to_pylist()
    problems = _key_problems(query_ids, predictions.keys())
    preds = {str(k): v for k, v in predictions.items()}
    for qid, candidates in zip(query_ids, queries.column("candidate_ids").to_pylist()):
        if qid not in preds:
            continue
        parsed, errs = _entries(qid, preds[qid], _int_entry, "")
        problems += errs
        if parsed is None:
            continue
        n = len(candidates or [])
        top = min(max(genecis.KS), n)
        problems += _length_and_duplicates(qid, parsed, minimum=top, maximum=n)
        outside = [p for p in parsed if not 0 <= int(p) < n]
        if outside:
            problems.append(f"query {qid}: positions outside 0..{n - 1} ({_first(outside)})")
    return problems
