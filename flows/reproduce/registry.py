"""The registry of paper tables (tables/<paper>.yaml, tables/models.yaml) expanded into entries.

A table row's config is the deep merge of the paper's `defaults`, the table's `config`, the row's `config` and
the column's benchmark / split; "@<id>" (or {"@": <id>, ...}) stands for a model of models.yaml. Meta keys in
a config (`deviations`, `wrap`) are taken out before validation.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources

import yaml

from cirflow.schemas.errors import ConfigError

# refined benchmarks (CoLLM §4.2) are a benchmark in its own format, under another data folder
DATA_FOLDERS = {"refined-cirr": "cirr", "refined-fashioniq": "fashioniq"}
META = ("deviations", "wrap", "inconsistencies")
_COLUMN = re.compile(r"^(?:(?P<bench>[a-z-]+):)?(?:(?P<group>[a-z_]+)/)?(?P<metric>.+)$")


@dataclass(frozen=True)
class Entry:
    paper: str
    table: str
    row: str
    column: str           # as the registry writes it: "[benchmark:][group/]metric"
    benchmark: str        # the benchmark's name (cirr, circo, fashioniq, genecis)
    data_folder: str      # the folder under --data-root (the benchmark's name, or refined-cirr, ...)
    split: str | None
    group: str | None     # Fashion-IQ category / GeneCIS task; None = the overall value
    metric: str           # a metric name, or "mean(a,b)" of two
    reported: float | None
    config: dict = field(default_factory=dict, hash=False, compare=False)   # models still as "@id"
    method: str = ""
    pending: str | None = None       # why the row cannot run yet (a training stage, a lost prompt set)
    deviations: tuple[str, ...] = ()
    inconsistencies: tuple[str, ...] = ()
    pick: str | None = None          # an ablation's variant (ip_cir_ablation) holding the row's numbers
    wrap: str | None = None          # run inside this method's config as its `base` (ip_cir_ablation)
    tolerance: float = 1.0


def _read(name: str) -> dict:
    text = resources.files("cirflow.flows.reproduce").joinpath("tables", name).read_text()
    return yaml.safe_load(text)


@lru_cache(maxsize=None)
def models() -> dict:
    return _read("models.yaml")


@lru_cache(maxsize=None)
def papers() -> dict[str, dict]:
    """Every paper's registry file, by its `paper` name."""
    out = {}
    for f in sorted(resources.files("cirflow.flows.reproduce").joinpath("tables").iterdir()):
        if f.name.endswith(".yaml") and f.name != "models.yaml":
            doc = _read(f.name)
            out[doc["paper"]] = doc
    return out


def merge(base: dict, over: dict) -> dict:
    """Deep merge: dicts merge key by key, anything else (lists, None, scalars) replaces."""
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def entries(paper: str | None = None, table: str | None = None) -> list[Entry]:
    known = papers()
    if paper is not None and paper not in known:
        raise ConfigError(f"unknown paper {paper!r}; known: {', '.join(known)}")
    out = []
    for name, doc in known.items():
        if paper is not None and name != paper:
            continue
        tables = [t for t in doc["tables"] if table is None or str(t["table"]).lower() == str(table).lower()]
        if paper is not None and table is not None and not tables:
            raise ConfigError(f"{paper} has no table {table!r} in the registry; tables: "
                              f"{', '.join(str(t['table']) for t in doc['tables'])}")
        for t in tables:
            out.extend(_table_entries(doc, t))
    return out


def _table_entries(doc: dict, t: dict) -> list[Entry]:
    out = []
    for r in t["rows"]:
        if len(r["reported"]) != len(t["columns"]):
            raise ConfigError(f"{doc['paper']} table {t['table']} row {r['row']!r}: {len(r['reported'])} values "
                              f"for {len(t['columns'])} columns")
        cfg = merge(merge(doc.get("defaults", {}), t.get("config", {})), r.get("config", {}))
        devs = tuple(doc.get("deviations", [])) + tuple(_meta(t.get("config"), "deviations")) + \
            tuple(_meta(r.get("config"), "deviations"))
        wrap = cfg.get("wrap")
        # a None at the top level removes a defaults section the row's method does not have (CIReVL has no `ldre`)
        cfg = {k: v for k, v in cfg.items() if k not in META and v is not None}
        for col, value in zip(t["columns"], r["reported"]):
            m = _COLUMN.match(col)
            folder = m["bench"] or t.get("benchmark")
            if folder is None:
                raise ConfigError(f"{doc['paper']} table {t['table']}: column {col!r} names no benchmark")
            out.append(Entry(
                paper=doc["paper"], table=str(t["table"]), row=r["row"], column=col,
                benchmark=DATA_FOLDERS.get(folder, folder), data_folder=folder,
                split=t.get("splits", doc.get("splits", {})).get(folder), group=m["group"], metric=m["metric"],
                reported=value, config=cfg, method=cfg["method"], pending=r.get("pending"),
                deviations=tuple(dict.fromkeys(devs)), inconsistencies=tuple(r.get("inconsistencies", [])),
                pick=r.get("pick"), wrap=wrap, tolerance=float(doc.get("tolerance", 1.0))))
    return out


def _meta(cfg: dict | None, key: str) -> list:
    # deviations may sit at any depth a YAML anchor put them; only the top level is meta
    return list((cfg or {}).get(key, []))


def model_ids(cfg) -> list[str]:
    """The models.yaml ids a config refers to."""
    found = []
    if isinstance(cfg, dict):
        if "@" in cfg:
            found.append(cfg["@"])
        for k, v in cfg.items():
            if k != "@":
                found += model_ids(v)
    elif isinstance(cfg, list):
        for v in cfg:
            found += model_ids(v)
    elif isinstance(cfg, str) and cfg.startswith("@"):
        found.append(cfg[1:])
    return list(dict.fromkeys(found))


def resolve_models(cfg, local: dict[str, str], servers: dict[str, str]):
    """Replace every model reference by its config: a local folder (--models-from), a server (--server), or
    the hub id / open_clip tag of models.yaml."""
    if isinstance(cfg, dict):
        if "@" in cfg:
            rest = {k: v for k, v in cfg.items() if k != "@"}
            return merge(model_config(cfg["@"], local, servers), resolve_models(rest, local, servers))
        return {k: resolve_models(v, local, servers) for k, v in cfg.items()}
    if isinstance(cfg, list):
        return [resolve_models(v, local, servers) for v in cfg]
    if isinstance(cfg, str) and cfg.startswith("@"):
        return model_config(cfg[1:], local, servers)
    return cfg


LOCAL_DEFAULTS = {"encoder": {"model": "local-dir:{path}"}, "mllm": {"backend": "transformers", "model": "{path}"}}


def model_config(mid: str, local: dict[str, str], servers: dict[str, str]):
    spec = models().get(mid)
    if spec is None:
        raise ConfigError(f"registry: unknown model id {mid!r} (tables/models.yaml)")
    if mid in local:
        tpl = spec.get("local", LOCAL_DEFAULTS.get(spec["kind"]))
        return _fill(tpl, local[mid])
    if mid in servers and spec["kind"] == "mllm":
        return {"backend": "http", "model": spec["config"]["model"], "base_url": servers[mid]}
    return copy.deepcopy(spec["config"])


def _fill(tpl, path: str):
    if isinstance(tpl, dict):
        return {k: _fill(v, path) for k, v in tpl.items()}
    return tpl.replace("{path}", path) if isinstance(tpl, str) else tpl


__all__ = ["DATA_FOLDERS", "Entry", "entries", "merge", "model_config", "model_ids", "models", "papers",
           "resolve_models"]
