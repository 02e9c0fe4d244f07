"""The comparison as Markdown, CSV and a Prefect table artifact (when a flow run is active)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from cirflow.flows.reproduce.registry import Entry
from cirflow.flows.reproduce.runner import Result


def _num(v) -> str:
    return "" if v is None else f"{v:.2f}"


def _delta(v) -> str:
    return "" if v is None else f"{v:+.2f}"


def markdown(results: list[Result]) -> str:
    lines = ["| paper | table | row | metric | paper | ours | Δ | status |", "|---|---|---|---|--:|--:|--:|---|"]
    for r in results:
        e = r.entry
        lines.append(f"| {e.paper} | {e.table} | {e.row} | {e.column} | {_num(e.reported)} | {_num(r.ours)} "
                     f"| {_delta(r.delta)} | {r.status} |")
    notes = notes_by_row(results)
    if notes:
        lines += ["", "Deviations and inconsistencies per row:", ""]
        for (paper, table, row), items in notes.items():
            lines.append(f"- {paper} table {table} · {row}")
            lines += [f"  - {n}" for n in items]
    return "\n".join(lines)


def notes_by_row(results: list[Result]) -> dict[tuple, list[str]]:
    out: dict[tuple, list[str]] = {}
    for r in results:
        e = r.entry
        items = out.setdefault((e.paper, e.table, e.row), [])
        for n in [*r.deviations, *(f"paper inconsistency: {i}" for i in e.inconsistencies)]:
            if n not in items:
                items.append(n)
    return {k: v for k, v in out.items() if v}


def csv_text(results: list[Result]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["paper", "table", "row", "metric", "paper_value", "ours", "delta", "status", "deviations"])
    for r in results:
        e = r.entry
        w.writerow([e.paper, e.table, e.row, e.column, _num(e.reported), _num(r.ours), _delta(r.delta), r.status,
                    " | ".join(r.deviations)])
    return buf.getvalue()


def write(results: list[Result], out: str | Path, stem: str) -> dict[str, str]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    md, cs = out / f"{stem}.md", out / f"{stem}.csv"
    md.write_text(markdown(results) + "\n")
    cs.write_text(csv_text(results))
    return {"markdown": str(md), "csv": str(cs)}


def prefect_artifact(results: list[Result], key: str) -> bool:
    """A table artifact on the active flow run; False when there is none (plain-Python use)."""
    from prefect.artifacts import create_table_artifact
    from prefect.context import FlowRunContext

    if FlowRunContext.get() is None:
        return False
    create_table_artifact(table=[{k: v for k, v in r.as_dict().items() if k not in ("deviations", "inconsistencies")}
                                 for r in results],
                          key=key, description="paper | ours | Δ | status (cirflow reproduce)")
    return True


def listing(entries: list[Entry], why: dict[int, str | None]) -> str:
    """`--list`: one line per entry with whether it can run here."""
    lines = ["| paper | table | row | metric | reported | method | runnable here |", "|---|---|---|---|--:|---|---|"]
    for i, e in enumerate(entries):
        lines.append(f"| {e.paper} | {e.table} | {e.row} | {e.column} | {_num(e.reported)} | {e.method} "
                     f"| {'yes' if why[i] is None else 'no: ' + why[i]} |")
    return "\n".join(lines)


__all__ = ["csv_text", "listing", "markdown", "notes_by_row", "prefect_artifact", "write"]
