"""In-process BLIP-2 captioner (`mllm.backend: blip2`): Blip2Processor + Blip2ForConditionalGeneration, the
captioners the text-query baselines used (metrics-and-methods B.2, B.3; IP-CIR §3.1 reads their captions):

* LDRE: BLIP-2 OPT-6.7b (e.g. Salesforce/blip2-opt-6.7b-coco), nucleus sampling, 15 captions per image
  (`ldre.n_captions: 15`, `ldre.caption_sampling` with temperature 1, top_p 0.9: one seeded request each).
* CIReVL: BLIP-2 FlanT5-XXL (Salesforce/blip2-flan-t5-xxl), deterministic, prompted with "Describe the image in
  complete detail. You must especially focus on all the objects in the image" (the reference_caption template).

Speaks the MLLM protocol (generate(requests) -> ChatResult list), so caption_images and the store treat it like
any backend. BLIP-2 has no chat roles: the request's system text, if any, is put before its prompt; the
request must carry exactly one image. Greedy requests are batched (left padding; `beams` > 1 is LAVIS's beam
search, their default is 5); sampled requests run one at a time under their own seed, so a caption depends
only on (image, prompt, seed). An unreadable image, a request without exactly one image, or an input the
processor rejects fails that item only; a model that cannot generate at all raises BackendUnavailable.
"""

from __future__ import annotations

import time
from typing import Sequence


from cirflow.models.mllm.in_process import InProcessModel
from cirflow.models.mllm.protocol import ChatRequest, ChatResult, check_json_answer, load_image
from cirflow.models.mllm.redact import redact
from cirflow.models.mllm.transformers_backend import _device, _torch_dtype  # the same dtype / device rules
from cirflow.schemas.errors import BackendUnavailable
from cirflow.schemas.mllm import MLLMConfig
from cirflow.schemas.progress import step_progress


class _BadInput(Exception):
    """The item's own fault (its image or its prompt), not the model's."""


class Blip2MLLM(InProcessModel):
    def __init__(self, cfg: MLLMConfig):
        if cfg.backend != "blip2":
            raise ValueError(f"Blip2MLLM needs backend='blip2', got {cfg.backend!r}")
        from transformers import Blip2ForConditionalGeneration, Blip2Processor

        self.cfg = cfg
        self.device = _device(cfg.device)
        self.processor = Blip2Processor.from_pretrained(cfg.model, revision=cfg.revision, trust_remote_code=False)
        self.processor.tokenizer.padding_side = "left"  # prompts must end together for batched generation
        self.model = Blip2ForConditionalGeneration.from_pretrained(
            cfg.model, revision=cfg.revision, dtype=_torch_dtype(cfg.dtype), trust_remote_code=False,
        ).to(self.device).eval()  # fmt: skip
        self.encoder_decoder = bool(self.model.language_model.config.is_encoder_decoder)  # FlanT5 vs OPT

    # ------------------------------------------------------------------------------------------ public

    def generate(self, requests: Sequence[ChatRequest], progress: bool = True) -> list[ChatResult]:
        results: list[ChatResult | None] = [None] * len(requests)
        greedy, sampled = [], []
        with step_progress(len(requests), "req", enabled=progress) as bar:  # folded into the stage's line
            for i, req in enumerate(requests):
                t0 = time.monotonic()
                if len(req.images) != 1:
                    results[i] = _failed(req, f"BLIP-2 captions one image per request, got {len(req.images)}", 0.0)
                    bar.update(1)
                    continue
                try:
                    image = load_image(req.images[0], self.cfg.max_image_pixels)
                except Exception as e:  # noqa: BLE001 - an unreadable image fails its item only
                    results[i] = _failed(req, redact(f"cannot read image: {type(e).__name__}: {e}"),
                                         time.monotonic() - t0)
                    bar.update(1)
                    continue
                (sampled if req.sampling.temperature > 0 else greedy).append((i, req, image))
            bs = self.cfg.batch_size
            for start in range(0, len(greedy), bs):
                for i, res in self._run(greedy[start:start + bs]):
                    results[i] = res
                bar.update(len(greedy[start:start + bs]))
            for item in sampled:
                for i, res in self._run([item]):
                    results[i] = res
                bar.update(1)
        return results  # type: ignore[return-value]

    def describe(self) -> dict:
        import torch
        import transformers

        return {"backend": "blip2", **self.cfg.key_fields(), "device": str(self.device),
                "language_model": type(self.model.language_model).__name__,
                "torch_dtype": str(self.model.dtype).removeprefix("torch."),
                "transformers_version": transformers.__version__, "torch_version": torch.__version__}


    # --------------------------------------------------------------------------------------- internals

    def _run(self, batch: list) -> list[tuple[int, ChatResult]]:
        t0 = time.monotonic()
        try:
            texts = self._generate(batch)
        except Exception as e:  # noqa: BLE001
            if len(batch) > 1:  # find the culprit (or fit in memory): one by one
                return [pair for item in batch for pair in self._run([item])]
            i, req, _ = batch[0]
            if isinstance(e, _BadInput):
                return [(i, _failed(req, f"cannot process input: {e}", time.monotonic() - t0))]
            raise BackendUnavailable(f"in-process BLIP-2 {self.cfg.model!r} on {self.device}",
                                     f"generation failed: {redact(f'{type(e).__name__}: {e}')}") from e
        share = (time.monotonic() - t0) / len(batch)
        out = []
        for (i, req, _), raw in zip(batch, texts):
            text, err = check_json_answer(raw.strip(), req.json_schema)
            out.append((i, ChatResult(req.id, text, "ok" if err is None else "failed", err, share, req.sampling.seed)))
        return out

    def _generate(self, batch: list) -> list[str]:
        import torch

        prompts = [(f"{req.system}\n{req.prompt}" if req.system else req.prompt).strip() for _, req, _ in batch]
        try:
            inputs = self.processor(images=[im for _, _, im in batch], text=prompts, return_tensors="pt",
                                    padding=True)
        except Exception as e:  # noqa: BLE001
            raise _BadInput(redact(f"{type(e).__name__}: {e}")) from e
        inputs = inputs.to(self.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        reqs = [req for _, req, _ in batch]
        # Blip2ForConditionalGeneration hands generation to its language model, which would otherwise use its
        # own defaults, not the checkpoint's generation_config.json
        kwargs = {"max_new_tokens": max(r.sampling.max_tokens for r in reqs),
                  "generation_config": self.model.generation_config}
        s = reqs[0].sampling
        if s.temperature > 0:
            assert len(batch) == 1, "sampled requests run alone, under their own seed"
            # nucleus sampling (LDRE); vLLM semantics: top_k -1 = off, which is transformers' 0
            kwargs.update(do_sample=True, temperature=s.temperature, top_p=s.top_p, top_k=max(s.top_k, 0))
            devices = [self.device.index or 0] if self.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices), torch.inference_mode():
                torch.manual_seed(s.seed)
                out = self.model.generate(**inputs, **kwargs)
        else:
            kwargs.update(do_sample=False, num_beams=self.cfg.beams)
            with torch.inference_mode():
                out = self.model.generate(**inputs, **kwargs)
        # a decoder-only LM (OPT) returns the prompt ids before the new tokens; an encoder-decoder one (T5)
        # returns its decoder start token first
        out = out[:, 1:] if self.encoder_decoder else out[:, inputs["input_ids"].shape[1]:]
        rows = [out[k, :r.sampling.max_tokens] for k, r in enumerate(reqs)]
        return self.processor.batch_decode(rows, skip_special_tokens=True)


def _failed(req: ChatRequest, error: str, seconds: float) -> ChatResult:
    return ChatResult(req.id, None, "failed", error, seconds, req.sampling.seed)
