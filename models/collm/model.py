"""The CoLLM model (collm.txt §3.1, fig. 2): vision encoder f, adapter g, LLM embedder Φ, projection p.

    model = build_collm(vision_model="ViT-L-14", vision_pretrained="openai", llm="/models/SFR-Embedding-2_R")
    z = model.encode_image(pixels)                          # f(v)            [B, D] (D = the CLIP embed dim)
    c = model.encode_query(h=model.encode_image(ref), texts=mods)    # p(Φ([g(h); w]))  [B, D], eq. 5 / §3.3
    c_v = model.encode_query(h=h, texts=None); c_w = model.encode_query(h=None, texts=caps)    # eqs. 3, 4
    model = CoLLMModel.from_trained(folder)                  # a trained folder alone (no base checkpoints)

- f: an open_clip tower, its image embedding (after open_clip's projection). The retrieval target is z = f(v).
  CLIP ViTs get LoRA (supp. 9.1, table 14: "CLIP models require ViT tuning"); `lora_vision=False` freezes f.
  `vision_tower="blip"`: f is a transformers BLIP ViT from a local folder (`vision_model`), BLIP's ITC image
  feature (cirflow.models.collm.vision); the paper freezes it (`lora_vision: false`, table 14), LoRA on its blocks
  is table 14's other row.
- g: maps the reference embedding to ONE token of the LLM's input space (§6: "our triplet synthesis method generates
  a single visual token"). Its form is not printed; assumption: LLaVA-1.5's `mlp2x_gelu` projector (the paper's
  training code is the LLaVA codebase, supp. 9.1), `adapter="linear"` for a single Linear. g sees the L2-normalised
  embedding, so the Slerp output (unit norm) and f(v_r) of real triplets have one scale.
- Φ: any transformers decoder (`AutoModel`, no LM head) with LoRA (`peft`, target "all-linear": assumption, LLaVA's
  LoRA targets every linear layer), pooled at the LAST token: the query is laid out in the LLEM instruction format
  of supp. 7.2 and ends with the EOS token, as E5-Mistral / SFR-Embedding-2 pool it (`append_eos`).
- p: a Linear from the LLM width to D (form not printed; assumption).

LoRA (supp. 9.1): rank 64 for CLIP-L / BLIP-L, 32 for CLIP-B, dropout 0.1. The pre-training LoRA alpha is not
printed; assumption alpha = rank (as the fine-tuning stage sets rank = alpha = 16, supp. 9.2). Fine-tuning on MTCIR
(`init=<trained CoLLM folder>`): the pre-trained LoRA weights are merged into the base weights, fresh LoRA with rank
= alpha = 16 on the LLM only (`lora_vision=False, train_adapter=False, train_projection=False`: "only the LLM is
fine-tuned", supp. 9.2).

Folder written by `export_extras` next to the engine's model.safetensors (the whole module state): collm_config.json
(these settings), vision/open_clip_config.json (a BLIP tower: config.json + blip_tower.json), llm/config.json +
tokenizer files, and the peft adapters saved with `save_pretrained` in llm_adapter/ and vision_adapter/
(adapter_config.json + adapter_model.safetensors: usable with `PeftModel.from_pretrained(base,
folder/"llm_adapter")` on the base checkpoint).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cirflow.models.collm import synthesis, vision
from cirflow.schemas.errors import ConfigError
from cirflow.schemas.collm import CoLLMSettings  # torch-free: configs key on it at `--plan` time

SETTINGS_FILE = "collm_config.json"
WEIGHTS = "model.safetensors"


class CoLLMModel(nn.Module):
    def __init__(self, settings: CoLLMSettings, visual: nn.Module, llm: nn.Module, tokenizer):
        super().__init__()
        self.settings = settings
        self.tokenizer = tokenizer
        self.visual = visual  # f: an open_clip `.visual` or a BlipTower, both with .output_dim
        d = int(visual.output_dim)
        width = int(llm.config.hidden_size)
        self.adapter = (nn.Linear(d, width) if settings.adapter == "linear" else
                        nn.Sequential(nn.Linear(d, width), nn.GELU(), nn.Linear(width, width)))
        self.llm = llm
        self.projection = nn.Linear(width, d)
        self.embed_dim = d

    # ---- construction ---------------------------------------------------------------------------------------

    @classmethod
    def build(cls, settings: CoLLMSettings, *, weights: bool = True, folder: Path | None = None) -> "CoLLMModel":
        """weights=True: base checkpoints (or `init`'s trained folder, LoRA merged) then fresh LoRA; weights=False:
        the architecture from `folder`'s configs (model.safetensors is loaded by the caller)."""
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        if not weights:
            visual = vision.tower_from_config(folder / "vision")
            llm = AutoModel.from_config(AutoConfig.from_pretrained(folder / "llm"))
            tok = AutoTokenizer.from_pretrained(folder / "llm")
            model = cls(settings, visual, llm, tok)
        elif settings.init:
            model = cls.from_trained(settings.init)
            model.settings = settings
            model._merge_lora()
        else:
            if not Path(settings.llm).is_dir():
                raise ConfigError(f"CoLLM: the LLM {settings.llm!r} is not a local model folder")
            visual = vision.load_tower(settings.vision_tower, settings.vision_model, settings.vision_pretrained)
            llm = AutoModel.from_pretrained(settings.llm, dtype=torch.float32)
            model = cls(settings, visual, llm, AutoTokenizer.from_pretrained(settings.llm))
        model._add_lora()
        return model

    @classmethod
    def from_trained(cls, folder: str | Path, device: str | torch.device = "cpu") -> "CoLLMModel":
        from safetensors.torch import load_model

        folder = Path(folder)
        if not (folder / SETTINGS_FILE).is_file() or not (folder / WEIGHTS).is_file():
            raise ConfigError(f"{folder} is not a trained CoLLM folder (needs {SETTINGS_FILE} and {WEIGHTS})")
        settings = CoLLMSettings.model_validate_json((folder / SETTINGS_FILE).read_text())
        model = cls.build(settings, weights=False, folder=folder)
        load_model(model, str(folder / WEIGHTS), device=str(device))
        return model.to(device).eval()

    def _add_lora(self) -> None:
        from peft import LoraConfig, get_peft_model

        s = self.settings
        lora = dict(r=s.lora_rank, lora_alpha=s.alpha, lora_dropout=s.lora_dropout)
        self.llm = get_peft_model(self.llm, LoraConfig(target_modules=s.lora_llm_targets, **lora))
        if s.lora_vision:
            targets = s.lora_vision_targets or vision.lora_targets(s.vision_tower)
            self.visual = get_peft_model(self.visual, LoraConfig(target_modules=list(targets), **lora))
        else:
            self.visual.requires_grad_(False)
        self.adapter.requires_grad_(s.train_adapter)
        self.projection.requires_grad_(s.train_projection)

    def _merge_lora(self) -> None:
        from peft import PeftModel

        if isinstance(self.llm, PeftModel):
            self.llm = self.llm.merge_and_unload()
        if isinstance(self.visual, PeftModel):
            self.visual = self.visual.merge_and_unload()

    def train(self, mode: bool = True):
        super().train(mode)
        if not self.settings.lora_vision:
            self.visual.eval()  # frozen: no dropout
        return self

    # ---- encoders -------------------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.projection.weight.device

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """f(v) [B, D], not normalised (the loss and retrieval normalise)."""
        return self.visual(pixels.to(self.device))

    def encode_query(self, h: torch.Tensor | None, texts: Sequence[str] | None) -> torch.Tensor:
        """p(Φ(query)) [B, D], L2-normalised: h the reference embedding (image line) and/or texts (text line)."""
        if h is None and texts is None:
            raise ValueError("a CoLLM query needs a reference embedding, a text or both")
        n = len(h) if h is not None else len(texts)
        ids, img_at, lengths = self._layout(n, texts, image=h is not None)
        embed = self.llm.get_input_embeddings()
        x = embed(ids.to(self.device))
        if h is not None:
            tok = self.adapter(F.normalize(h, dim=-1).to(self.adapter_dtype)).to(x.dtype)
            x = torch.cat([x[:, :img_at], tok[:, None], x[:, img_at + 1:]], dim=1)
        lengths = lengths.to(self.device)
        mask = (torch.arange(x.shape[1], device=self.device)[None] < lengths[:, None]).long()
        hidden = self.llm(inputs_embeds=x, attention_mask=mask).last_hidden_state
        last = hidden[torch.arange(n, device=self.device), lengths - 1]
        return F.normalize(self.projection(last.to(self.projection.weight.dtype)), dim=-1)

    @property
    def adapter_dtype(self) -> torch.dtype:
        return next(self.adapter.parameters()).dtype

    def _layout(self, n: int, texts: Sequence[str] | None, image: bool):
        """Token ids [n, L] (right-padded), the image slot's position, and the lengths: supp. 7.2's
        "Instruct: {instruction}\\nQuery:\\nImage: [IMAGE]\\nText: [TEXT]" without the absent lines."""
        layout = synthesis.paper_data()["query_layout"]
        tok = self.tokenizer
        head = layout["prefix"].format(instruction=self.settings.instruction) + (layout["image_line"] if image else "")
        head_ids = tok(head, add_special_tokens=True)["input_ids"]
        if tok.eos_token_id is not None and head_ids and head_ids[-1] == tok.eos_token_id \
                and tok.eos_token_id != tok.bos_token_id:
            head_ids = head_ids[:-1]  # tokenizers that close every text with EOS: it goes at the very end
        eos = [tok.eos_token_id] if self.settings.append_eos and tok.eos_token_id is not None else []
        pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
        tails = [[] for _ in range(n)]
        if texts is not None:
            for i, t in enumerate(texts):
                line = tok(layout["text_line"].format(text=str(t)), add_special_tokens=False)["input_ids"]
                tails[i] = line[:self.settings.max_text_tokens]
        slot = [pad] if image else []
        rows = [head_ids + slot + tail + eos for tail in tails]
        width = max(len(r) for r in rows)
        ids = torch.full((n, width), pad, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        return ids, len(head_ids), torch.tensor([len(r) for r in rows], dtype=torch.long)

    # ---- training -------------------------------------------------------------------------------------------

    def forward(self, pixel_values: torch.Tensor | None = None, caption: Sequence[str] | None = None,
                reference_pixels: torch.Tensor | None = None, target_pixels: torch.Tensor | None = None,
                modification: Sequence[str] | None = None, *, synthesize: dict | None = None,
                need: tuple[str, ...] = ("composed", "image_query", "text_query"), **_ignored) -> dict:
        """Training features of a batch, through forward so that a DDP wrapper sees the call.

        Image–caption batch (pixel_values, caption; §3.2): target z = f(v), v' = t(v), h' = f(v'), j = eq. 1,
        h* = Slerp (eq. 2), w* = template text; returns z, composed c (eq. 5), image_query c^v (eq. 3), text_query
        c^w (eq. 4, the caption w_i), restricted to `need`. Triplet batch (reference_pixels, target_pixels,
        modification; §3.3): z = f(v^t), c = p(Φ([g(f(v^r)); w])). `synthesize`: alpha, text_ratio, neighbour."""
        if reference_pixels is not None:
            return {"target": self.encode_image(target_pixels),
                    "composed": self.encode_query(self.encode_image(reference_pixels), list(modification))}
        s = synthesize or {}
        z = self.encode_image(pixel_values)
        h_aug = self.encode_image(synthesis.augment(pixel_values.to(self.device)))
        j = synthesis.neighbours(h_aug, s.get("neighbour", "nearest"))
        h_star = synthesis.slerp(h_aug, h_aug[j], float(s.get("alpha", 0.5)))
        out = {"target": z}
        if "composed" in need:
            w_star = synthesis.synthesize_texts(list(caption), j, float(s.get("text_ratio", 0.75)))
            out["composed"] = self.encode_query(h_star, w_star)
        if "image_query" in need:
            out["image_query"] = self.encode_query(h_star, None)
        if "text_query" in need:
            out["text_query"] = self.encode_query(None, list(caption))
        return out

    # ---- persistence ----------------------------------------------------------------------------------------

    def export_extras(self, folder: str | Path) -> None:
        from peft import PeftModel

        folder = Path(folder)
        (folder / SETTINGS_FILE).write_text(json.dumps(self.settings.model_dump(mode="json"), indent=1,
                                                       sort_keys=True))
        s = self.settings
        if s.init:
            vision.copy_tower_config(Path(s.init) / "vision", folder / "vision")
        else:
            vision.save_tower_config(s.vision_tower, s.vision_model, s.vision_pretrained, folder / "vision",
                                     self.visual)
        llm = self.llm.get_base_model() if isinstance(self.llm, PeftModel) else self.llm
        llm.config.save_pretrained(folder / "llm")
        self.tokenizer.save_pretrained(folder / "llm")
        for name, part in (("llm_adapter", self.llm), ("vision_adapter", self.visual)):
            if isinstance(part, PeftModel):
                part.save_pretrained(folder / name)


def build_collm(**settings) -> CoLLMModel:
    """The training stage's model factory: `Ref(target="cirflow.models.collm:build_collm", kwargs=settings)`."""
    return CoLLMModel.build(CoLLMSettings(**settings))
