"""The MVFT-JI vision-language model (mvft-ji.txt §3.3): a BLIP-2 Q-Former with k shared learnable query tokens.

Built on transformers' `Blip2ForImageTextRetrieval` (frozen ViT `vision_model`, `query_tokens`, BERT-style text
`embeddings`, `qformer`, `vision_projection`, `text_projection`), so a BLIP-2 ITM checkpoint such as
`Salesforce/blip2-itm-vit-g` loads as is. Every encoder returns the k query-token outputs, projected to
d = `image_text_hidden_size` and L2-normalised, [B, k, d]:

- composed query (eq. 8): query tokens + the modification's text tokens, the query tokens cross-attending to the
  reference image's ViT tokens (BLIP-2's ITM-style fusion);
- target text / caption (eq. 9): query tokens + text tokens, no image (the cross-attention blocks are skipped);
- image (eq. 10): query tokens cross-attending to the ViT tokens (BLIP-2's image features).

Assumption (the paper does not say): outputs that saw an image (composed query, image) use `vision_projection`,
text-only outputs use `text_projection`, as BLIP-2's ITC pairs them. `encode_text(..., tokens="cls")` gives BLIP-2's
own text feature (the [CLS] output, [B, 1, d]) for the appendix C baselines with the untrained model.

Only what the losses update is trainable: the ViT and the ITM head are frozen (requires_grad False) and the ViT
always runs in eval mode under no_grad.

Folder layout (`save_pretrained` / `from_pretrained`): model.safetensors (the whole Blip2ForImageTextRetrieval
state), config.json (Blip2Config), tokenizer files (BERT WordPiece, as BLIP-2), preprocessor_config.json
(BlipImageProcessor), mvft_config.json (the settings below). A plain BLIP-2 ITM folder (no mvft_config.json)
loads with the default settings.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

# file names and the weights' hash live in identity.py: stage keys use them at `--plan` time, without torch
from cirflow.models.mvft.identity import SETTINGS_FILE, WEIGHTS_FILE, weights_sha256  # noqa: F401
from cirflow.schemas.errors import CirflowError

FORMAT = "cirflow-mvft"


class MVFTSettings(BaseModel):
    """What the model folder carries beyond the Blip2Config."""

    model_config = ConfigDict(extra="forbid")

    format: str = FORMAT
    version: int = 1
    max_text_length: int = 64  # texts are padded/truncated to this many tokens (fixed: batch-independent inputs)
    composed_projection: Literal["vision", "text"] = "vision"  # see the module docstring (an assumption)


class MVFTModel(nn.Module):
    def __init__(self, blip, tokenizer, image_processor, settings: MVFTSettings | None = None):
        super().__init__()
        if not blip.config.qformer_config.use_qformer_text_input:
            raise CirflowError("MVFT model: the Q-Former has no text layers (qformer_config.use_qformer_text_input "
                               "is false); start from a BLIP-2 ITM checkpoint such as Salesforce/blip2-itm-vit-g")
        self.blip = blip
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.settings = settings or MVFTSettings()
        for p in self.blip.vision_model.parameters():
            p.requires_grad_(False)
        for p in self.blip.itm_head.parameters():  # unused by the losses: must not count as trained
            p.requires_grad_(False)
        self.blip.vision_model.eval()

    # ---- sizes ------------------------------------------------------------------------------------------------

    @property
    def num_tokens(self) -> int:
        """k, the number of shared learnable query tokens."""
        return int(self.blip.config.num_query_tokens)

    @property
    def dim(self) -> int:
        return int(self.blip.config.image_text_hidden_size)

    @property
    def device(self) -> torch.device:
        return self.blip.query_tokens.device

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def train(self, mode: bool = True):
        super().train(mode)
        self.blip.vision_model.eval()  # frozen: no dropout, whatever the training loop asks
        return self

    # ---- preprocessing ----------------------------------------------------------------------------------------

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """input_ids / attention_mask [B, max_text_length]; fixed padding, so a text's ids never depend on its batch."""
        enc = self.tokenizer([str(t) for t in texts], padding="max_length", truncation=True,
                             max_length=self.settings.max_text_length, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def preprocess(self, images) -> torch.Tensor:
        """pixel_values [B, 3, H, W] from PIL images."""
        return self.image_processor(images=list(images), return_tensors="pt")["pixel_values"]

    # ---- encoders (eqs. 8-10) ---------------------------------------------------------------------------------

    def image_tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The frozen ViT's token features [B, 1 + patches, hidden] (post-layernorm, BLIP-2's ln_vision)."""
        with torch.no_grad():
            return self.blip.vision_model(pixel_values=pixel_values.to(self.device)).last_hidden_state

    def encode_image(self, pixel_values: torch.Tensor, *, image_tokens: torch.Tensor | None = None) -> torch.Tensor:
        v = self.image_tokens(pixel_values) if image_tokens is None else image_tokens
        out = self._qformer(self._queries(v.shape[0]), None, image=v)
        return _project(self.blip.vision_projection, out)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *,
                    tokens: Literal["query", "cls"] = "query") -> torch.Tensor:
        """[B, k, d] query-token outputs (eq. 9), or with tokens="cls" BLIP-2's own text feature [B, 1, d]."""
        input_ids, attention_mask = input_ids.to(self.device), attention_mask.to(self.device)
        if tokens == "cls":
            h = self.blip.qformer(query_embeds=self.blip.embeddings(input_ids=input_ids), query_length=0,
                                  attention_mask=attention_mask).last_hidden_state
            return _project(self.blip.text_projection, h[:, :1])
        if tokens != "query":
            raise ValueError(f"tokens must be 'query' or 'cls', got {tokens!r}")
        out = self._qformer(self._queries(input_ids.shape[0]), (input_ids, attention_mask), image=None)
        return _project(self.blip.text_projection, out)

    def encode_composed(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor, *,
                        image_tokens: torch.Tensor | None = None) -> torch.Tensor:
        v = self.image_tokens(pixel_values) if image_tokens is None else image_tokens
        out = self._qformer(self._queries(v.shape[0]), (input_ids.to(self.device), attention_mask.to(self.device)),
                            image=v)
        vision = self.settings.composed_projection == "vision"
        proj = self.blip.vision_projection if vision else self.blip.text_projection
        return _project(proj, out)

    def forward(self, pixel_values: torch.Tensor | None = None, modification_ids: torch.Tensor | None = None,
                modification_mask: torch.Tensor | None = None, target_ids: torch.Tensor | None = None,
                target_mask: torch.Tensor | None = None, caption_ids: torch.Tensor | None = None,
                caption_mask: torch.Tensor | None = None, *, need: tuple[str, ...] = ("composed", "target", "caption",
                                                                                      "image"),
                **_ignored) -> dict[str, torch.Tensor]:
        """The training features of a batch (a `data.collate` dict): {"composed", "target", "caption", "image"}, each
        [B, k, d], restricted to `need`. Training goes through forward (not the encode_* methods) so that a DDP
        wrapper sees the call. The reference image's ViT tokens are computed once for the composed query and the
        image (the triplet's reference image is the caption's image, §3.2)."""
        out: dict[str, torch.Tensor] = {}
        v = self.image_tokens(pixel_values) if {"composed", "image"} & set(need) else None
        if "composed" in need:
            out["composed"] = self.encode_composed(pixel_values, modification_ids, modification_mask, image_tokens=v)
        if "target" in need:
            out["target"] = self.encode_text(target_ids, target_mask)
        if "caption" in need:
            out["caption"] = self.encode_text(caption_ids, caption_mask)
        if "image" in need:
            out["image"] = self.encode_image(pixel_values, image_tokens=v)
        return out

    # ---- internals --------------------------------------------------------------------------------------------

    def _queries(self, batch: int) -> torch.Tensor:
        return self.blip.query_tokens.expand(batch, -1, -1)

    def _qformer(self, queries: torch.Tensor, text: tuple[torch.Tensor, torch.Tensor] | None,
                 image: torch.Tensor | None) -> torch.Tensor:
        """Q-Former over [query tokens; text tokens], the queries cross-attending to `image` when given; returns
        the k query-token outputs [B, k, hidden]."""
        k = queries.shape[1]
        if text is None:
            embeds, mask = queries, None
        else:
            ids, text_mask = text
            embeds = self.blip.embeddings(input_ids=ids, query_embeds=queries)  # queries get no position embedding
            mask = torch.cat([torch.ones(queries.shape[:2], dtype=text_mask.dtype, device=text_mask.device),
                              text_mask], dim=1)
        kw = {}
        if image is not None:
            kw = {"encoder_hidden_states": image,
                  "encoder_attention_mask": torch.ones(image.shape[:2], dtype=torch.long, device=image.device)}
        with _cross_attention(self.blip.qformer, enabled=image is not None):
            h = self.blip.qformer(query_embeds=embeds, query_length=k, attention_mask=mask, **kw).last_hidden_state
        return h[:, :k]

    # ---- persistence ------------------------------------------------------------------------------------------

    def save_pretrained(self, path: str | os.PathLike) -> Path:
        from safetensors.torch import save_file

        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.blip.state_dict().items()}
        save_file(state, out / WEIGHTS_FILE, metadata={"format": "pt"})
        self.blip.config.save_pretrained(out)
        self.tokenizer.save_pretrained(out)
        self.image_processor.save_pretrained(out)
        (out / SETTINGS_FILE).write_text(json.dumps(self.settings.model_dump(), indent=1, sort_keys=True))
        return out

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, device: str | torch.device | None = None) -> MVFTModel:
        from transformers import AutoTokenizer, Blip2ForImageTextRetrieval, BlipImageProcessor

        p = Path(path)
        if not (p / "config.json").is_file():
            raise CirflowError(f"MVFT model: {p} holds no config.json (not a BLIP-2 / MVFT model folder)")
        settings = MVFTSettings()
        if (p / SETTINGS_FILE).is_file():
            settings = MVFTSettings.model_validate_json((p / SETTINGS_FILE).read_text())
        blip = Blip2ForImageTextRetrieval.from_pretrained(p, dtype=torch.float32)
        model = cls(blip, AutoTokenizer.from_pretrained(p), BlipImageProcessor.from_pretrained(p), settings)
        if device is not None:
            model.to(device)
        return model.eval()


def _project(proj: nn.Linear, h: torch.Tensor) -> torch.Tensor:
    z = proj(h.to(proj.weight.dtype))
    return nn.functional.normalize(z, dim=-1)


@contextmanager
def _cross_attention(qformer, enabled: bool):
    """transformers' Q-Former layer insists on an image whenever it has query tokens; eq. 9 feeds query tokens with
    text only, so the cross-attention blocks are switched off for that call (their weights stay untouched).
    Incompatible with gradient checkpointing, which would re-run the layer after the switch is restored."""
    if enabled:
        yield
        return
    if any(getattr(m, "gradient_checkpointing", False) for m in qformer.modules()):
        raise CirflowError("MVFT model: Q-Former gradient checkpointing is not supported (text-only encoding)")
    layers = [layer for layer in qformer.encoder.layer if layer.has_cross_attention]
    try:
        for layer in layers:
            layer.has_cross_attention = False
        yield
    finally:
        for layer in layers:
            layer.has_cross_attention = True
