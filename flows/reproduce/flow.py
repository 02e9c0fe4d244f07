"""The reproduce run as a Prefect flow, so its comparison table is an artifact of the run (the methods' own
flows run inside it as subflows)."""

from __future__ import annotations

from prefect import flow

from cirflow.flows.reproduce import report
from cirflow.flows.reproduce.runner import Environment, Result, compare


@flow(name="reproduce")
def reproduce(entries: list, env: Environment, key: str, progress: bool = False,
              servers_checked: bool = False) -> list[Result]:
    results = compare(entries, env, progress=progress, servers_checked=servers_checked)
    report.prefect_artifact(results, key)
    return results
