"""`cirflow reproduce`: the papers' result tables as data (tables/*.yaml), each row resolved to the config that
reproduces it, run through the method registry and the store, and compared with the number the paper reports.

    entries("pefuse", table="2")          # one Entry per (row, column), with its config and the reported value
    compare(entries, data_root=..., ...)  # runs what is runnable here (the store reuses what exists) -> Rows
"""

from cirflow.flows.reproduce.registry import Entry, entries, papers
from cirflow.flows.reproduce.runner import Environment, Result, compare

__all__ = ["Entry", "Environment", "Result", "compare", "entries", "papers"]
