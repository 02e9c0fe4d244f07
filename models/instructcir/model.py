"""The InstructCIR embedding reformulation network (instructcir.txt §II-B, §II-C, §IV-A, fig. 4).

    model = build_instructcir(clip_model="ViT-L-14", clip_pretrained="openai")
    e_r = model.encode_query(ref_pixels, texts)      # g_θ([z_r; φ_t(t)]), z_r = f_θ(x_a, t)          (eq. 1)
    e_t = model.encode_target(tgt_pixels)            # g_θ([z_t; φ_t(∅)]), z_t = f_θ'(x_b, ∅), θ' the EMA of θ
    model = InstructCIRModel.from_trained(folder)

- f_θ: a CLIP ViT (open_clip) whose every block gets a cross-attention layer after self-attention: image tokens are
  the queries, the CLIP text encoder's token sequence (final-LN outputs, padding masked) the keys/values, with the
  backbone's head count and Xavier init (§IV-A); then the block's MLP. Each sub-layer is pre-LN with a residual, as
  the CLIP block's own (the new LayerNorm before the cross-attention is an assumption: the paper says "MLP layer
  combined with layer norm and residual connection"). z is the ViT's pooled, projected output (dim D).
- φ_t: the CLIP text encoder (pooled, projected, dim D); its token sequence feeds the cross-attention. The null text
  ∅ is the empty string (CLIP tokens [SOT, EOT]).
- g_θ: an MLP over [z; φ_t(t)] (2D → hidden → D, GELU); hidden width not printed (assumption: 2D).
- Target side: the same f with the null text; its weights an EMA of the online f (I-JEPA style, no gradient),
  updated after every optimizer step by `on_step_end`: θ' ← m θ' + (1 − m) θ. The paper does not print m; the
  default 0.996 is I-JEPA's starting momentum (kept constant: an assumption). g_θ and φ_t are shared by both
  sides (the paper: "the same function").
- Both the text encoder and the reformulated image encoder are trained (§II-C); `train_text=False` freezes φ_t.

Table V ablations are settings (different training keys): "w/o EMA" = `ema=False` (the target side uses the
online f, with gradients); "w/o CrossAtt." = `cross_attention=False, ema=False` (plain CLIP ViT, the text enters only
through g_θ — the paper removes both).

Folder (`export_extras` next to model.safetensors, the whole state including the EMA encoder):
instructcir_config.json (these settings) and clip/open_clip_config.json (architecture + preprocessing; the CLIP
tokenizer is open_clip's bundled BPE).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cirflow.models.collm import vision
from cirflow.schemas.errors import ConfigError
from cirflow.schemas.instructcir import InstructCIRSettings  # torch-free: configs key on it at `--plan` time

SETTINGS_FILE = "instructcir_config.json"
WEIGHTS = "model.safetensors"
NULL_TEXT = ""


class ReformulationBlock(nn.Module):
    """An open_clip ResidualAttentionBlock with a text cross-attention between self-attention and MLP."""

    def __init__(self, block: nn.Module, text_width: int, heads: int):
        super().__init__()
        self.block = block
        width = block.ln_1.normalized_shape[0]
        self.ln_x = nn.LayerNorm(width)
        self.cross_attn = nn.MultiheadAttention(width, heads, kdim=text_width, vdim=text_width, batch_first=True)
        for name, p in self.cross_attn.named_parameters():  # Xavier init (§IV-A), biases zero
            (nn.init.xavier_uniform_ if p.ndim > 1 else nn.init.zeros_)(p)

    def forward(self, x: torch.Tensor, text: torch.Tensor, text_pad: torch.Tensor) -> torch.Tensor:
        b = self.block
        x = x + b.ls_1(b.attention(q_x=b.ln_1(x)))
        x = x + self.cross_attn(self.ln_x(x), text, text, key_padding_mask=text_pad, need_weights=False)[0]
        return x + b.ls_2(b.mlp(b.ln_2(x)))


class InstructCIRModel(nn.Module):
    def __init__(self, settings: InstructCIRSettings, clip: nn.Module):
        super().__init__()
        self.settings = settings
        if not getattr(clip.visual.transformer, "batch_first", True):
            raise ConfigError("InstructCIR: open_clip ViTs with batch_first=False are not supported")
        self.text = _TextTower(clip)
        self.visual = clip.visual
        if settings.cross_attention:
            heads = self.visual.transformer.resblocks[0].attn.num_heads
            self.visual.transformer.resblocks = nn.ModuleList(
                ReformulationBlock(blk, self.text.width, heads) for blk in self.visual.transformer.resblocks)
        d = int(self.visual.output_dim)
        hidden = settings.predictor_hidden or 2 * d
        self.predictor = nn.Sequential(nn.Linear(2 * d, hidden), nn.GELU(), nn.Linear(hidden, d))
        self.target_visual = copy.deepcopy(self.visual).requires_grad_(False) if settings.ema else None
        self.text.requires_grad_(settings.train_text)
        self.embed_dim = d

    # ---- construction ---------------------------------------------------------------------------------------

    @classmethod
    def build(cls, settings: InstructCIRSettings, *, folder: Path | None = None) -> "InstructCIRModel":
        clip = (vision.load_clip(settings.clip_model, settings.clip_pretrained) if folder is None
                else vision.clip_from_config(folder / "clip"))
        return cls(settings, clip)

    @classmethod
    def from_trained(cls, folder: str | Path, device: str | torch.device = "cpu") -> "InstructCIRModel":
        folder = Path(folder)
        settings = InstructCIRSettings.model_validate_json(_settings_text(folder, SETTINGS_FILE))
        return _load(cls.build(settings, folder=folder), folder, device)

    def export_extras(self, folder: str | Path) -> None:
        folder = Path(folder)
        (folder / SETTINGS_FILE).write_text(json.dumps(self.settings.model_dump(mode="json"), indent=1, sort_keys=True))
        vision.save_clip_config(self.settings.clip_model, self.settings.clip_pretrained, folder / "clip")

    # ---- encoders -------------------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.predictor[0].weight.device

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return self.text.tokenize([str(t) for t in texts], self.settings.clip_model).to(self.device)

    def reformulate(self, visual: nn.Module, pixels: torch.Tensor, tokens: torch.Tensor,
                    pad: torch.Tensor) -> torch.Tensor:
        """f(x, t): the ViT with text cross-attention in every block → pooled, projected z [B, D]."""
        if not self.settings.cross_attention:
            return visual(pixels)
        x = visual._embeds(pixels)
        for blk in visual.transformer.resblocks:
            x = blk(x, tokens, pad)
        pooled, _ = visual._pool(x)
        return pooled @ visual.proj if visual.proj is not None else pooled

    def encode_query(self, pixels: torch.Tensor, texts: list[str]) -> torch.Tensor:
        """e_r (eq. 1), L2-normalised [B, D]."""
        e_r, _ = self.query_parts(pixels, texts)
        return e_r

    def query_parts(self, pixels: torch.Tensor, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(e_r, φ_t(t)), both L2-normalised: what the λ combiner (eq. 3) mixes."""
        pooled, tokens, pad = self.text(self.tokenize(texts))
        z_r = self.reformulate(self.visual, pixels.to(self.device), tokens, pad)
        e_r = self.predictor(torch.cat([z_r, pooled], dim=-1))
        return F.normalize(e_r, dim=-1), F.normalize(pooled, dim=-1)

    def encode_target(self, pixels: torch.Tensor) -> torch.Tensor:
        """e_t = g_θ([z_t; φ_t(∅)]), z_t from the EMA encoder (no gradient) or, with ema=False, the online one."""
        pixels = pixels.to(self.device)
        pooled, tokens, pad = self.text(self.tokenize([NULL_TEXT] * len(pixels)))
        if self.target_visual is not None:
            with torch.no_grad():
                z_t = self.reformulate(self.target_visual, pixels, tokens.detach(), pad)
        else:
            z_t = self.reformulate(self.visual, pixels, tokens, pad)
        return F.normalize(self.predictor(torch.cat([z_t, pooled], dim=-1)), dim=-1)

    def forward(self, reference_pixels: torch.Tensor, target_pixels: torch.Tensor, modification: list[str],
                **_ignored) -> dict[str, torch.Tensor]:
        return {"query": self.encode_query(reference_pixels, list(modification)),
                "target": self.encode_target(target_pixels)}

    # ---- EMA ------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def on_step_end(self, step: int) -> None:
        """θ' ← m·θ' + (1 − m)·θ after every optimizer step (the engine's hook)."""
        if self.target_visual is None:
            return
        m = self.settings.ema_momentum
        for t, o in zip(self.target_visual.parameters(), self.visual.parameters()):
            t.mul_(m).add_(o.detach(), alpha=1 - m)
        for t, o in zip(self.target_visual.buffers(), self.visual.buffers()):
            t.copy_(o)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.target_visual is not None:
            self.target_visual.eval()  # a teacher: no dropout
        return self


class _TextTower(nn.Module):
    """open_clip's CLIP text encoder returning (pooled φ_t [B, D], token features [B, L, W], padding mask [B, L])."""

    def __init__(self, clip: nn.Module):
        super().__init__()
        for name in ("token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection"):
            setattr(self, name, getattr(clip, name))
        self.register_buffer("attn_mask", clip.attn_mask, persistent=False)
        self.pool_type = getattr(clip, "text_pool_type", "argmax")
        self.eos_id = getattr(clip, "text_eos_id", None)
        self.width = int(self.ln_final.normalized_shape[0])
        self._tokenizer = None

    def tokenize(self, texts: list[str], model_name: str) -> torch.Tensor:
        if self._tokenizer is None:
            import open_clip

            try:
                self._tokenizer = open_clip.get_tokenizer(model_name)
            except Exception:  # noqa: BLE001 - local-dir CLIPs use open_clip's bundled CLIP BPE
                self._tokenizer = open_clip.tokenize
        return self._tokenizer(texts)

    def forward(self, ids: torch.Tensor):
        from open_clip.transformer import text_global_pool

        cast = self.transformer.get_cast_dtype()
        x = self.token_embedding(ids).to(cast) + self.positional_embedding.to(cast)
        x = self.ln_final(self.transformer(x, attn_mask=self.attn_mask))
        pooled = text_global_pool(x, ids, self.pool_type, eos_token_id=self.eos_id)
        proj = self.text_projection
        pooled = proj(pooled) if isinstance(proj, nn.Linear) else (pooled @ proj if proj is not None else pooled)
        return pooled, x, ids == 0  # CLIP pads with id 0: padded keys are masked out of the cross-attention


class InstructCIRCombiner(nn.Module):
    """Stage two (eq. 3): e_f = λ·e_r + (1 − λ)·φ_t(t), λ trained with the backbone frozen (same L_contr, e_f in
    place of e_r). e_r and φ_t(t) are L2-normalised before mixing (assumption); λ starts at `lambda_init`
    (not printed; 0.5 an assumption). The backbone is a trained InstructCIR folder."""

    def __init__(self, backbone: InstructCIRModel, lambda_init: float = 0.5, backbone_dir: str | None = None):
        super().__init__()
        self.backbone = backbone.requires_grad_(False)
        self.lam = nn.Parameter(torch.tensor(float(lambda_init)))
        self.config = {"lambda_init": float(lambda_init), "backbone_dir": backbone_dir}

    @classmethod
    def from_trained(cls, folder: str | Path, device: str | torch.device = "cpu") -> "InstructCIRCombiner":
        folder = Path(folder)
        cfg = json.loads(_settings_text(folder, COMBINER_FILE))
        backbone = InstructCIRModel.build(InstructCIRSettings.model_validate_json(
            _settings_text(folder / "backbone", SETTINGS_FILE)), folder=folder / "backbone")
        return _load(cls(backbone, cfg["lambda_init"], cfg.get("backbone_dir")), folder, device)

    def export_extras(self, folder: str | Path) -> None:
        folder = Path(folder)
        (folder / COMBINER_FILE).write_text(json.dumps(self.config, indent=1, sort_keys=True))
        (folder / "backbone").mkdir(parents=True, exist_ok=True)
        self.backbone.export_extras(folder / "backbone")

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()  # frozen
        return self

    def encode_query(self, pixels: torch.Tensor, texts: list[str]) -> torch.Tensor:
        e_r, phi = self.backbone.query_parts(pixels, texts)
        return combine(e_r, phi, self.lam)

    def encode_target(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.backbone.encode_target(pixels)

    def forward(self, reference_pixels: torch.Tensor, target_pixels: torch.Tensor, modification: list[str],
                **_ignored) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            e_r, phi = self.backbone.query_parts(reference_pixels, list(modification))
            e_t = self.backbone.encode_target(target_pixels)
        return {"query": combine(e_r, phi, self.lam), "target": e_t}


COMBINER_FILE = "combiner_config.json"


def combine(e_r: torch.Tensor, phi: torch.Tensor, lam: torch.Tensor | float) -> torch.Tensor:
    """Eq. 3: e_f = λ·e_r + (1 − λ)·φ_t(t)."""
    return lam * e_r + (1 - lam) * phi


def build_instructcir(**settings) -> InstructCIRModel:
    """Model factory of the first training stage: `Ref(target="cirflow.models.instructcir:build_instructcir")`."""
    return InstructCIRModel.build(InstructCIRSettings(**settings))


def build_instructcir_combiner(backbone_dir: str, lambda_init: float = 0.5) -> InstructCIRCombiner:
    """Model factory of stage two: the trained stage-one folder (a train_instructcir artifact's model/)."""
    return InstructCIRCombiner(InstructCIRModel.from_trained(backbone_dir), lambda_init, backbone_dir)


def load_trained(folder: str | Path, device: str | torch.device = "cpu") -> InstructCIRModel | InstructCIRCombiner:
    """Either stage's trained folder (the combiner when it holds combiner_config.json)."""
    folder = Path(folder)
    cls = InstructCIRCombiner if (folder / COMBINER_FILE).is_file() else InstructCIRModel
    return cls.from_trained(folder, device)


def _settings_text(folder: Path, name: str) -> str:
    if not (folder / name).is_file():
        raise ConfigError(f"{folder} is not a trained InstructCIR folder (no {name})")
    return (folder / name).read_text()


def _load(model: nn.Module, folder: Path, device) -> nn.Module:
    from safetensors.torch import load_model

    if not (folder / WEIGHTS).is_file():
        raise ConfigError(f"{folder} holds no {WEIGHTS}")
    load_model(model, str(folder / WEIGHTS), device=str(device))
    return model.to(device).eval()
