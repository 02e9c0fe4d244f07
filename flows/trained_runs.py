"""What the trained-model methods (`collm`, `instructcir`) share: stored build artifacts named in a config, the
trained model used as the encoder, and ablation variants of one config run from the store.

Stored artifacts are named like trained models: "key:<key prefix>" or "stage:<stage>[@<key prefix>]" (the stage's
only artifact when no prefix is given); `cirflow build mtcir|instructcir` prints the keys of what it stored.

`variants`: each is the run config with dotted fields set (`pretrain.loss.alpha: 0.3`, `data.limit: 16000`), run
after the base config; whatever a variant does not change (ingest, a shared training, the gallery features) is
read from the store, so an ablation table costs only its trainings and what depends on them.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from typing import Any, Callable, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from cirflow.flows.summary import print_summary
from cirflow.schemas.base import Strict
from cirflow.schemas.config import RunBase
from cirflow.schemas.errors import ConfigError
from cirflow.schemas.mllm import MLLMConfig
from cirflow.schemas.names import Name
from cirflow.schemas.compare import VariantValue
from cirflow.storage import Artifact, ArtifactStore

REF_PREFIXES = ("key:", "stage:")


def check_ref(v: str | None, field: str = "reference") -> str | None:
    if v is not None and not v.startswith(REF_PREFIXES):
        raise ValueError(f"{field} must be 'key:<key prefix>' or 'stage:<stage>[@<key prefix>]', not {v!r}")
    return v


def stored(store: ArtifactStore, ref: str, field: str) -> Artifact:
    """The stored artifact a config names (one line ConfigError when there is none, or more than one)."""
    if ref.startswith("stage:"):
        stage, _, prefix = ref[len("stage:"):].partition("@")
        hits = [m for m in store.manifests() if m.stage == stage and m.key.startswith(prefix.lower())]
        if len(hits) != 1:
            what = "no" if not hits else f"{len(hits)}"
            raise ConfigError(f"{field}: {what} stored {stage} artifacts match {ref!r} in {store.url}"
                              + (" (write stage:<stage>@<key prefix>)" if hits else " (run the build first)"))
        return Artifact(store, hits[0])
    try:
        return store.find(ref[len("key:"):])
    except Exception as e:  # noqa: BLE001 - a store error about a user's reference is one config line
        raise ConfigError(f"{field}: {ref!r}: {str(e).splitlines()[0]}") from None


def upstream(store: ArtifactStore, art: Artifact, stage: str, field: str) -> Artifact:
    """The `stage` artifact `art` was made from (its inputs, their inputs, ...): a build's texts know their
    collection through pairs → collection."""
    todo, seen = [art.manifest], set()
    while todo:
        m = todo.pop(0)
        for key in m.inputs.values():
            if key in seen:
                continue
            seen.add(key)
            a = store.find(key)
            if a.stage == stage:
                return a
            todo.append(a.manifest)
    raise ConfigError(f"{field}: {art.stage}/{art.key[:12]} was not made from a {stage} artifact; name it")


class TrainedEncoderConfig(Strict):
    """How the trained model encodes the benchmark (nothing here changes a training key)."""

    # "trained": the model this run trains; "key:<prefix>" / "stage:<train stage>[@<prefix>]": a stored one
    weights: str = "trained"
    device: str = "auto"
    batch_size: int = Field(32, ge=1)
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"  # in the embed stages' keys

    @field_validator("weights")
    @classmethod
    def _weights(cls, v: str) -> str:
        return v if v == "trained" else check_ref(v, "encoder.weights")

    # what run summaries and path checks read of an encoder
    @property
    def model(self) -> str:
        return f"trained:{self.weights}"

    pretrained: None = None
    tokenizer: None = None




class Variant(Strict):
    name: Name
    set: dict[str, VariantValue] = Field(min_length=1)  # dotted config field -> value


class TrainedRunBase(RunBase):
    """A benchmark run whose encoder is a model the run trains (or a stored one): no MLLM, ablation variants."""

    mllm: MLLMConfig | None = None  # type: ignore[assignment] - these methods ask no MLLM
    variants: list[Variant] = Field(default_factory=list)

    @model_validator(mode="after")
    def _variant_names(self):
        if len({v.name for v in self.variants}) != len(self.variants):
            raise ValueError("variant names repeat")
        return self


@contextmanager
def section_errors():
    """Free-form sections (train overrides, loss settings) validated by their own classes: one config line."""
    try:
        yield
    except ValidationError as e:
        err = e.errors()[0]
        raise ValueError(f"{e.title} {'.'.join(map(str, err['loc']))}: {err['msg']}") from None


def with_fields(cfg: BaseModel, values: dict[str, Any], source: str) -> BaseModel:
    """A copy of `cfg` with dotted fields set (inside free-form sections such as `loss` a missing key is
    created: the section's own validation names a wrong one), validated like a config file."""
    data = cfg.model_dump(mode="json")
    for path, value in values.items():
        node, parts = data, path.split(".")
        for p in parts[:-1]:
            if not isinstance(node, dict) or not isinstance(node.get(p), dict):
                raise ConfigError(f"{source}: {path}: no section {p!r} in the run config")
            node = node[p]
        node[parts[-1]] = value
    data.pop("variants", None)
    try:
        return type(cfg).model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(map(str, err["loc"]))
        raise ConfigError(f"{source}: {where + ': ' if where else ''}{err['msg']}") from None


def run_variants(cfg: BaseModel, run_one: Callable[[BaseModel], dict]) -> dict:
    """The base config, then every variant; the base run's summary with `variants` (name -> metrics and run
    folder) and every run's stages."""
    doc = run_one(cfg.model_copy(update={"variants": []}))
    if not cfg.variants:
        return doc
    rows = {cfg.name: {"metrics": doc["metrics"], "output_dir": doc["output_dir"], "set": {}}}
    stages = list(doc["stages"])
    for v in cfg.variants:
        vcfg = with_fields(cfg, v.set, f"variant {v.name}").model_copy(update={"name": f"{cfg.name}-{v.name}"})
        vdoc = run_one(vcfg)
        rows[v.name] = {"metrics": vdoc["metrics"], "output_dir": vdoc["output_dir"], "set": v.set}
        stages += [{**s, "label": f"{v.name}/{s['label']}"} for s in vdoc["stages"]]
    return {**doc, "variants": rows, "stages": stages}


def run_trained(cfg, progress: bool, train: Callable, stage: type, gallery_task, queries_task, **query
                ) -> tuple[dict, Artifact]:
    """One run of a trained-model method over the benchmark's groups: `train(store, cfg, progress)` -> (model
    artifact, artifacts made for it) once, before the first group (Fashion-IQ categories share it); per group
    ingest → gallery / query features (the embed stages' tasks, the model loaded once by `stage().load`;
    `query`: the query stage's own params) → retrieve → evaluate. Returns the summary and the model's artifact."""
    from cirflow.flows.runs import run_groups

    group, state = trained_group(train, stage, gallery_task, queries_task, **query)
    doc = run_groups(cfg, group, progress, add_slots=lambda pool, _: pool)
    return doc, state["model"]


def trained_groups(store: ArtifactStore, cfg, pool, progress: bool, train: Callable, stage: type, gallery_task,
                   queries_task, **query) -> list[tuple[str, list[Artifact]]]:
    """One comparison row of a trained-model method (`cirflow compare` with a collm / instructcir base): per
    benchmark group (label, its artifacts, evaluate last), the training shared by the groups; `pool` is the
    comparison's, so a variant with the same trained model keeps it loaded."""
    from cirflow.schemas.progress import group as progress_group

    group, _ = trained_group(train, stage, gallery_task, queries_task, **query)
    out = []
    for g in cfg.benchmark.groups():
        label = cfg.benchmark.label(g)
        with progress_group(label):  # the benchmark group on its stages' progress lines (the training's too)
            out.append((label, group(store, cfg, g, pool, progress)))
    return out


def trained_group(train: Callable, stage: type, gallery_task, queries_task, **query) -> tuple[Callable, dict]:
    """(the per-group function of `run_trained`, its state: "model", "made" once the training ran)."""
    from cirflow.flows.gpu import uses_gpu
    from cirflow.flows.runs import ingest, retrieve_evaluate
    from cirflow.tasks.collm.trained_encoder import TrainedModelRuntime, model_identity
    from cirflow.tasks.training import resolve_model_ref
    from cirflow.tasks.plan_mode import PlanBlocked, Planned

    state: dict = {}

    def group(store, cfg_, grp, pool, progress_):
        if "model" not in state:
            state["model"], state["made"] = train(store, cfg_, progress_)
        model, enc = state["model"], cfg_.encoder
        if isinstance(model, Planned):  # `--plan` / the store shortcut: the features are keyed on trained weights
            raise PlanBlocked(f"{model.stage}/{model.key[:12]} would be {model.status} first: the features are keyed "
                              "on the trained weights, so what follows can only be planned after it ran")
        bench = ingest(store, cfg_, grp)
        ident, folder = model_identity(model), str(resolve_model_ref(store, f"key:{model.key}"))
        rt = TrainedModelRuntime(model_dir=folder, device=enc.device)
        handle = pool.add("trained", lambda: stage().load(rt), gpu=lambda: uses_gpu(enc), key=ident)
        common = dict(precision=enc.precision, device=enc.device, batch_size=enc.batch_size,
                      shard_size=cfg_.embed.shard_size, encoder=handle, progress=progress_)
        gallery = gallery_task(store, bench, ident, folder, **common)
        queries = queries_task(store, bench, ident, folder, **query, **common)
        return [bench, *state["made"], gallery, queries, *retrieve_evaluate(store, cfg_, bench, queries, gallery)]

    return group, state


def print_report(doc: dict, as_json: bool) -> None:
    print_summary(doc, as_json)
    if as_json or not doc.get("variants"):
        return
    names = list(dict.fromkeys(m for r in doc["variants"].values() for m in r["metrics"]))
    print("\nvariants (percent)\n")
    print("| variant | set | " + " | ".join(names) + " |")
    print("|---|---|" + "--:|" * len(names))
    for name, r in doc["variants"].items():
        vals = " | ".join(f"{r['metrics'][m]:.2f}" if m in r["metrics"] else "" for m in names)
        print(f"| {name} | {json.dumps(r['set'])} | {vals} |")


__all__ = ["TrainedEncoderConfig", "TrainedRunBase", "Variant", "section_errors", "check_ref", "print_report", "run_variants", "stored", "upstream",
           "trained_groups", "with_fields"]
