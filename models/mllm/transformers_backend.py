"""In-process MLLM backend: AutoProcessor + AutoModelForImageTextToText + generate().

Used by CPU tests and the demo with the tiny model, and usable on a GPU worker without a server.
Greedy requests are batched (left padding). Sampled requests run one at a time under their own seed, so a
sampled answer depends only on (request, seed), never on which other requests shared its batch.
A request with a JSON schema is decoded under it (models/mllm/constrained.py, like vLLM's structured outputs)
when `structured_outputs` is on (forced: the in-process default is off, see schemas/mllm.py) and its schema is supported and fits in max_tokens; otherwise it
is generated freely. Either way the answer is parsed and validated after generation.

Failures split as in the http backend (issue 9): an image that cannot be read, or an input the processor
rejects, fails its item only (status "failed"); anything else (the model cannot generate at all: out of
memory even for one item, a device error, a broken chat template) raises BackendUnavailable, so the calling
stage commits nothing computed by a broken backend.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Sequence


from cirflow.models.mllm.in_process import InProcessModel
from cirflow.models.mllm.protocol import ChatRequest, ChatResult, check_json_answer, load_image
from cirflow.models.mllm.redact import redact
from cirflow.schemas.errors import BackendUnavailable
from cirflow.schemas.mllm import MLLMConfig
from cirflow.schemas.progress import step_progress


class _BadInput(Exception):
    """The processor rejected this item's input (e.g. an image it cannot patch): the item's fault, not the model's."""


@dataclass
class _Prepared:
    index: int
    req: ChatRequest
    text: str  # the prompt rendered through the chat template
    images: list


def _torch_dtype(name: str):
    import torch

    return {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def _device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class TransformersMLLM(InProcessModel):
    def __init__(self, cfg: MLLMConfig):
        if cfg.backend != "transformers":
            raise ValueError(f"TransformersMLLM needs backend='transformers', got {cfg.backend!r}")
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.cfg = cfg
        self.device = _device(cfg.device)
        # trust_remote_code=False, explicitly: a checkpoint must not run its own code in our workers.
        self.processor = AutoProcessor.from_pretrained(cfg.model, revision=cfg.revision, trust_remote_code=False)
        self.tokenizer = getattr(self.processor, "tokenizer", self.processor)
        self.tokenizer.padding_side = "left"  # decoder-only batched generation: prompts must end together
        self.model = AutoModelForImageTextToText.from_pretrained(
            cfg.model, revision=cfg.revision, dtype=_torch_dtype(cfg.dtype), device_map=str(self.device),
            trust_remote_code=False,
        ).eval()  # fmt: skip
        self._tokens = None  # constrained.TokenTable: built on the first JSON-schema request
        self._grammars: dict[str, object] = {}  # schema JSON -> compiled grammar (None: not supported)

    # ------------------------------------------------------------------------------------------ public

    def generate(self, requests: Sequence[ChatRequest], progress: bool = True) -> list[ChatResult]:
        results: list[ChatResult | None] = [None] * len(requests)
        greedy: list[_Prepared] = []
        sampled: list[_Prepared] = []
        with step_progress(len(requests), "req", enabled=progress) as bar:  # folded into the stage's line
            for i, req in enumerate(requests):
                t0 = time.monotonic()
                try:
                    images = [load_image(p, self.cfg.max_image_pixels) for p in req.images]
                except Exception as e:  # noqa: BLE001 - an unreadable image fails its item only
                    why = redact(f"cannot read image: {type(e).__name__}: {e}")
                    results[i] = _failed(req, why, time.monotonic() - t0)
                    bar.update(1)
                    continue
                try:
                    p = self._prepare(i, req, images)
                except Exception as e:  # the chat template fails for a request: every such request would
                    raise self._unavailable("cannot render the chat template", e) from e
                (sampled if req.sampling.temperature > 0 else greedy).append(p)
            bs = self.cfg.batch_size
            for start in range(0, len(greedy), bs):
                for p, res in self._run_batch(greedy[start : start + bs]):
                    results[p.index] = res
                bar.update(len(greedy[start : start + bs]))
            for p in sampled:
                results[p.index] = self._run_batch([p])[0][1]
                bar.update(1)
        return results  # type: ignore[return-value]

    def describe(self) -> dict:
        import torch
        import transformers

        return {
            "backend": "transformers",
            **self.cfg.key_fields(),
            "torch_dtype": str(self.model.dtype).removeprefix("torch."),
            "device": str(self.device),
            "model_class": type(self.model).__name__,
            "transformers_version": transformers.__version__,
            "torch_version": torch.__version__,
        }


    # --------------------------------------------------------------------------------------- internals

    def _unavailable(self, what: str, e: BaseException) -> BackendUnavailable:
        return BackendUnavailable(f"in-process model {self.cfg.model!r} on {self.device}",
                                  f"{what}: {redact(f'{type(e).__name__}: {e}')}")

    def _prepare(self, index: int, req: ChatRequest, images: list) -> _Prepared:
        messages: list[dict] = []
        if req.system:
            messages.append({"role": "system", "content": [{"type": "text", "text": req.system}]})
        content = [{"type": "image"} for _ in images] + [{"type": "text", "text": req.prompt}]
        messages.append({"role": "user", "content": content})
        text = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return _Prepared(index, req, text, images)

    def _run_batch(self, batch: list[_Prepared]) -> list[tuple[_Prepared, ChatResult]]:
        t0 = time.monotonic()
        try:
            texts = self._generate_texts(batch)
        except Exception as e:  # noqa: BLE001
            if len(batch) > 1:
                # Find the culprit (or fit in memory): rerun one by one, so that only a bad item fails.
                return [pair for p in batch for pair in self._run_batch([p])]
            if isinstance(e, _BadInput):
                return [(batch[0], _failed(batch[0].req, f"cannot process input: {e}", time.monotonic() - t0))]
            # one item alone cannot be generated and its input was accepted: the model or device is broken
            raise self._unavailable("generation failed", e) from e
        # Each item of a batch is charged an equal share of the batch's wall time.
        share = (time.monotonic() - t0) / len(batch)
        out = []
        for p, raw in zip(batch, texts):
            text, err = check_json_answer(raw, p.req.json_schema)
            status = "ok" if err is None else "failed"
            out.append((p, ChatResult(p.req.id, text, status, err, share, p.req.sampling.seed)))
        return out

    def _generate_texts(self, batch: list[_Prepared]) -> list[str]:
        import torch

        images = [im for p in batch for im in p.images]
        try:
            inputs = self.processor(text=[p.text for p in batch], images=images or None, return_tensors="pt",
                                    padding=True)
        except Exception as e:  # noqa: BLE001
            raise _BadInput(redact(f"{type(e).__name__}: {e}")) from e
        inputs = inputs.to(self.model.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        prompt_len = inputs["input_ids"].shape[1]
        max_tokens = [p.req.sampling.max_tokens for p in batch]
        kwargs: dict[str, Any] = {"max_new_tokens": max(max_tokens)}
        constrained = self._json_constraint(batch, prompt_len)
        if constrained is not None:
            kwargs["logits_processor"] = constrained
        s = batch[0].req.sampling
        if s.temperature > 0:
            assert len(batch) == 1, "sampled requests run alone, under their own seed"
            # vLLM semantics: top_k -1 = off; transformers' "off" is 0 (None would fall back to its default 50).
            kwargs.update(do_sample=True, temperature=s.temperature, top_p=s.top_p, top_k=max(s.top_k, 0))
            devices = [self.model.device.index or 0] if self.model.device.type == "cuda" else []
            # fork_rng: seeding must not leak into (or depend on) the caller's global RNG state.
            with torch.random.fork_rng(devices=devices), torch.inference_mode():
                torch.manual_seed(s.seed)
                out = self.model.generate(**inputs, **kwargs)
        else:
            kwargs["do_sample"] = False
            with torch.inference_mode():
                out = self.model.generate(**inputs, **kwargs)
        # Greedy rows are independent, so cutting a row at its own max_tokens equals generating it alone.
        rows = [out[i, prompt_len : prompt_len + m] for i, m in enumerate(max_tokens)]
        return self.processor.batch_decode(rows, skip_special_tokens=True)


    def _json_constraint(self, batch: list[_Prepared], prompt_len: int):
        """The logits processors that keep each JSON-schema request of `batch` inside its schema, or None."""
        if not self.cfg.constrains_json():
            return None
        from cirflow.models.mllm import constrained

        rows = []
        for p in batch:
            g = self._grammar(p.req.json_schema) if p.req.json_schema is not None else None
            # an answer the budget cannot hold is generated freely (and fails validation with its raw text)
            fits = g is not None and constrained.feasible(g, p.req.sampling.max_tokens)
            rows.append((g, p.req.sampling.max_tokens) if fits else None)
        if not any(rows):
            return None
        from transformers import LogitsProcessorList

        if self._tokens is None:
            self._tokens = constrained.TokenTable(self.tokenizer, self.model.get_output_embeddings().weight.shape[0])
        eos = self.model.generation_config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [self.tokenizer.eos_token_id])
        return LogitsProcessorList([constrained.logits_processor(self._tokens, rows, prompt_len, eos)])

    def _grammar(self, schema: dict):
        import json

        from cirflow.models.mllm.constrained import UnsupportedSchema, compile_schema

        key = json.dumps(schema, sort_keys=True)
        if key not in self._grammars:
            try:
                self._grammars[key] = compile_schema(schema)
            except UnsupportedSchema:
                self._grammars[key] = None  # generated freely, validated afterwards (as before this existed)
        return self._grammars[key]


def _failed(req: ChatRequest, error: str, seconds: float) -> ChatResult:
    return ChatResult(req.id, None, "failed", error, seconds, req.sampling.seed)
