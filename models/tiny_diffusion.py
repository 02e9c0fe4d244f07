"""Tiny random-weight diffusers pipelines built offline, for tests and the demo.

Each builder saves a pipeline with `save_pretrained`, exactly like a real checkpoint folder (model_index.json,
one sub-folder per component), so the code under test loads it with the same `from_pretrained` calls as
production models (environment.md 3c, pipeline-facts.md 4). Weights are random: images are noise-like but
deterministic for a seed. Builders are idempotent through cirflow.models.tiny's marker protocol (a second call
with the same arguments returns at once; a build goes to a temp dir and is renamed into place).

The CLIP tokenizer is rebuilt from open_clip's bundled BPE (real token ids for the byte symbols and the first
merges), cut to a small vocabulary so that the text-encoder embeddings and the tokenizer files stay small.

| builder                             | pipeline class (how production loads it)                          |
|-------------------------------------|-------------------------------------------------------------------|
| build_tiny_instruct_pix2pix         | StableDiffusionInstructPix2PixPipeline                            |
| build_tiny_sdxl_instruct_pix2pix    | StableDiffusionXLInstructPix2PixPipeline                          |
| build_tiny_sdxl_turbo               | StableDiffusionXLPipeline (AutoPipelineForImage2Image → SDXL img2img) |
| build_tiny_gligen                   | StableDiffusionGLIGENPipeline (text + boxes)                      |
| build_tiny_gligen_text_image        | StableDiffusionGLIGENTextImagePipeline (text/image + boxes)       |
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

from cirflow.models.tiny import _build_once

_FORMAT_VERSION = 1  # bump when a recipe changes, so stale builds are rebuilt
_MERGES = 1000  # BPE merges kept in the tiny vocabulary (256 bytes + 256 word-final bytes + merges + 2 specials)
_HIDDEN = 32  # text-encoder width = SD1.x UNet cross-attention width (GLIGEN's position net needs them equal)


# ---- components ------------------------------------------------------------------------------------------

def _clip_vocab(n_merges: int = _MERGES) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The OpenAI CLIP BPE from open_clip's bundled file, cut to the first `n_merges` merges (environment.md 3c)."""
    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    lines = gzip.open(default_bpe()).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1:49152 - 256 - 2 + 1]][:n_merges]
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    vocab: dict[str, int] = {}
    for t in tokens:
        vocab.setdefault(t, len(vocab))
    return vocab, merges


def _tokenizer():
    from transformers import CLIPTokenizer

    vocab, merges = _clip_vocab()
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def _text_config(tok, with_projection: bool = False):
    from transformers import CLIPTextConfig

    eos = tok.convert_tokens_to_ids("<|endoftext|>")
    return CLIPTextConfig(vocab_size=len(tok), hidden_size=_HIDDEN, intermediate_size=37, num_attention_heads=4,
                          num_hidden_layers=2, max_position_embeddings=77, hidden_act="gelu",
                          bos_token_id=tok.convert_tokens_to_ids("<|startoftext|>"), eos_token_id=eos,
                          pad_token_id=eos, projection_dim=32)


def _vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         norm_num_groups=32, sample_size=64)


def _sd_unet(in_channels: int, **kw):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=1, sample_size=32,
                                in_channels=in_channels, out_channels=4,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=_HIDDEN,
                                attention_head_dim=8, norm_num_groups=32, **kw)


def _sdxl_unet(in_channels: int):
    from diffusers import UNet2DConditionModel

    # pipeline-facts.md 4 (diffusers' SDXL-InstructPix2Pix test config): cross-attention = 32 + 32 (both text
    # encoders' hidden states concatenated); added time ids 6 x 8 + pooled text projection 32 = 80.
    return UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=1, sample_size=32,
                                in_channels=in_channels, out_channels=4,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
                                use_linear_projection=True, addition_embed_type="text_time",
                                addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
                                projection_class_embeddings_input_dim=80, cross_attention_dim=64, norm_num_groups=32)


_SD_BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)


def _sd_components(unet_in: int, scheduler, **unet_kw) -> dict:
    from transformers import CLIPTextModel

    tok = _tokenizer()
    return dict(vae=_vae(), text_encoder=CLIPTextModel(_text_config(tok)).eval(), tokenizer=tok,
                unet=_sd_unet(unet_in, **unet_kw), scheduler=scheduler, safety_checker=None, feature_extractor=None,
                requires_safety_checker=False)


def _sdxl_components(unet_in: int, scheduler) -> dict:
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    tok = _tokenizer()
    return dict(vae=_vae(), text_encoder=CLIPTextModel(_text_config(tok)).eval(),
                text_encoder_2=CLIPTextModelWithProjection(_text_config(tok)).eval(), tokenizer=tok,
                tokenizer_2=_tokenizer(), unet=_sdxl_unet(unet_in), scheduler=scheduler)


def _save(make, seed: int):
    """Build `make()` under a fixed torch seed (without touching the caller's RNG) and return a saver."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        pipe = make()

    def save(tmp: Path) -> None:
        pipe.save_pretrained(tmp, safe_serialization=True)

    return save


def _builder(kind: str, out_dir, seed: int, make) -> Path:
    want = {"kind": kind, "seed": seed, "version": _FORMAT_VERSION}
    return _build_once(out_dir, want, lambda tmp: _save(make, seed)(tmp))


# ---- public builders -------------------------------------------------------------------------------------

def build_tiny_clip_tokenizer(out_dir: str | os.PathLike) -> Path:
    """A CLIPTokenizer folder (vocab.json, merges.txt, tokenizer config) with OpenAI CLIP's real ids for the byte
    symbols and the first merges; loadable with `CLIPTokenizer.from_pretrained(out_dir)`."""
    return _build_once(out_dir, {"kind": "clip_tokenizer", "merges": _MERGES, "version": _FORMAT_VERSION},
                       lambda tmp: _tokenizer().save_pretrained(tmp))


def build_tiny_instruct_pix2pix(out_dir: str | os.PathLike, seed: int = 0) -> Path:
    """StableDiffusionInstructPix2PixPipeline (8-channel UNet: noise latents + reference-image latents)."""

    def make():
        from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionInstructPix2PixPipeline

        return StableDiffusionInstructPix2PixPipeline(**_sd_components(8, EulerAncestralDiscreteScheduler(**_SD_BETAS)))

    return _builder("instruct_pix2pix", out_dir, seed, make)


def build_tiny_sdxl_instruct_pix2pix(out_dir: str | os.PathLike, seed: int = 0) -> Path:
    """StableDiffusionXLInstructPix2PixPipeline (two text encoders, text_time micro-conditioning, 8-ch UNet)."""

    def make():
        from diffusers import EulerDiscreteScheduler, StableDiffusionXLInstructPix2PixPipeline

        sched = EulerDiscreteScheduler(**_SD_BETAS, steps_offset=1, timestep_spacing="leading")
        return StableDiffusionXLInstructPix2PixPipeline(**_sdxl_components(8, sched), add_watermarker=False)

    return _builder("sdxl_instruct_pix2pix", out_dir, seed, make)


def build_tiny_sdxl_turbo(out_dir: str | os.PathLike, seed: int = 0) -> Path:
    """An SDXL text-to-image checkpoint like stabilityai/sdxl-turbo (EulerAncestral, trailing timesteps), so
    `AutoPipelineForImage2Image.from_pretrained` turns it into StableDiffusionXLImg2ImgPipeline."""

    def make():
        from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionXLPipeline

        sched = EulerAncestralDiscreteScheduler(**_SD_BETAS, steps_offset=1, timestep_spacing="trailing")
        return StableDiffusionXLPipeline(**_sdxl_components(4, sched), add_watermarker=False)

    return _builder("sdxl_turbo", out_dir, seed, make)


def build_tiny_gligen(out_dir: str | os.PathLike, seed: int = 0) -> Path:
    """StableDiffusionGLIGENPipeline (text phrases + boxes; gated self-attention UNet)."""

    def make():
        from diffusers import DDIMScheduler, StableDiffusionGLIGENPipeline

        return StableDiffusionGLIGENPipeline(**_sd_components(4, DDIMScheduler(**_SD_BETAS), attention_type="gated"))

    return _builder("gligen", out_dir, seed, make)


def build_tiny_gligen_text_image(out_dir: str | os.PathLike, seed: int = 0) -> Path:
    """StableDiffusionGLIGENTextImagePipeline: grounding by phrases and/or images. Adds a CLIP vision tower with
    projection, a CLIPImageProjection into the phrase space and a CLIPProcessor (local CLIPImageProcessor +
    the tiny tokenizer); images are embedded at 32 x 32."""

    def make():
        from diffusers import DDIMScheduler, StableDiffusionGLIGENTextImagePipeline
        from diffusers.pipelines.stable_diffusion import CLIPImageProjection
        from transformers import CLIPImageProcessor, CLIPProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

        parts = _sd_components(4, DDIMScheduler(**_SD_BETAS), attention_type="gated-text-image")
        image_proc = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                        do_center_crop=True, image_mean=[0.48145466, 0.4578275, 0.40821073],
                                        image_std=[0.26862954, 0.26130258, 0.27577711])
        vision = CLIPVisionModelWithProjection(CLIPVisionConfig(
            hidden_size=_HIDDEN, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, image_size=32,
            patch_size=8, projection_dim=_HIDDEN, hidden_act="gelu")).eval()
        return StableDiffusionGLIGENTextImagePipeline(
            **parts, processor=CLIPProcessor(image_processor=image_proc, tokenizer=parts["tokenizer"]),
            image_encoder=vision, image_project=CLIPImageProjection(hidden_size=_HIDDEN))

    return _builder("gligen_text_image", out_dir, seed, make)
