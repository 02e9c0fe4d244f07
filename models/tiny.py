"""Tiny random checkpoints built offline, for tests and `cirflow demo`.

They are saved exactly like real checkpoints (a transformers model directory, an open_clip `local-dir:`),
so the code under test loads them through the same calls as production models. The weights are random:
outputs are meaningless but deterministic for a seed. Recipes: docs/environment.md sections 3a and 3b.

Each builder is idempotent: a marker file records what was built; a second call with the same arguments
returns at once, a call with other arguments rebuilds. Builds go to a sibling temp directory first and are
renamed into place, so an interrupted build never leaves a half-written checkpoint behind a valid marker.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

MARKER = "cirflow_tiny.json"
_FORMAT_VERSION = 1  # bump when a recipe changes, so stale builds are rebuilt

# Text the tiny tokenizer's BPE merges are learned from. Many merges make most vocabulary entries real
# sub-words, so a random model decodes to word-like text instead of lone bytes or special tokens.
_CORPUS = """
a photo of a dog on the grass. the dog is brown and white. make the car red instead of blue.
change the background to a beach with the sea and the sun. remove the person from the image.
a cat sitting on a wooden table next to a cup of coffee. the shirt has long sleeves and a collar.
the dress is shorter and has a floral pattern. add snow to the street and make it night time.
two people are walking in the park with a black dog. a red bus drives down the city street.
the same object but made of glass. a bird flying over the water at sunset. replace the horse with a cow.
the image shows a kitchen with white cabinets, a window and a green plant. zoom in on the face.
the woman is wearing a yellow hat and sunglasses. the target image has more people and fewer cars.
a small boat on a lake surrounded by mountains and trees. the shoes are darker and have laces.
describe the edit. what color is the car? caption this image. the answer is yes. the answer is no.
""".strip()


def _marker_matches(out: Path, want: dict) -> bool:
    try:
        return json.loads((out / MARKER).read_text()) == want
    except (OSError, ValueError):
        return False


def _build_once(out_dir: str | os.PathLike, want: dict, build: Callable[[Path], None]) -> Path:
    """Run `build(tmp)` unless `out_dir` already holds a build described by `want`; then move it in place."""
    out = Path(out_dir)
    if _marker_matches(out, want):
        return out
    if out.exists() and any(out.iterdir()) and not (out / MARKER).exists():
        # Never delete a directory we did not create.
        raise FileExistsError(f"{out} exists, is not empty and holds no {MARKER}; refusing to overwrite it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        build(tmp)
        (tmp / MARKER).write_text(json.dumps(want, sort_keys=True))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _tiny_tokenizer_vocab(vocab_size: int = 640) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A byte-level BPE learned from _CORPUS: the 256 byte symbols plus merges, ids in merge order."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(_CORPUS.splitlines(), trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    # Re-number: bytes in sorted order, then merges in the order they were learned (so ids do not depend
    # on the trainer's internal numbering).
    vocab = {s: i for i, s in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    return vocab, merges


def build_tiny_qwen25vl(out_dir: str | os.PathLike, seed: int = 0) -> Path:
    """A ~0.25 M-parameter random Qwen2.5-VL chat model with processor, loadable by AutoProcessor and
    AutoModelForImageTextToText (and servable by `transformers serve`). Returns the directory."""

    def build(tmp: Path) -> None:
        import torch
        from transformers import (
            Qwen2_5_VLConfig,
            Qwen2_5_VLForConditionalGeneration,
            Qwen2_5_VLProcessor,
            Qwen2Tokenizer,
            Qwen2VLImageProcessor,
            Qwen2VLVideoProcessor,
        )

        vocab, merges = _tiny_tokenizer_vocab()
        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                    "<|image_pad|>", "<|video_pad|>"]  # fmt: skip
        # padding_side in the constructor so that it is saved: batched generation needs left padding.
        tok = Qwen2Tokenizer(vocab=vocab, merges=merges, unk_token=None, eos_token="<|im_end|>",
                             pad_token="<|endoftext|>", padding_side="left")  # fmt: skip
        tok.add_special_tokens({"additional_special_tokens": specials[1:]})
        ids = {s: tok.convert_tokens_to_ids(s) for s in specials}
        # Same layout as the real Qwen2.5-VL template (system turn optional, images before text).
        chat_template = (
            "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
            "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for c in message['content'] %}"
            "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
            "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
        )
        px = dict(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 16)  # 4..16 vision tokens per image: fast on CPU
        proc = Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(**px), tokenizer=tok,
                                   video_processor=Qwen2VLVideoProcessor(**px), chat_template=chat_template)  # fmt: skip
        cfg = Qwen2_5_VLConfig(
            text_config=dict(
                vocab_size=((len(tok) + 63) // 64) * 64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
                bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
            ),
            vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                               patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                               fullatt_block_indexes=[1]),  # fmt: skip
            image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
            vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        )
        # fork_rng: building must not disturb the caller's global RNG state.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = Qwen2_5_VLForConditionalGeneration(cfg).eval()
        gc = model.generation_config
        gc.pad_token_id, gc.eos_token_id, gc.bos_token_id = ids["<|endoftext|>"], ids["<|im_end|>"], ids["<|endoftext|>"]
        # Like real instruct checkpoints, sampling is the default; temperature=0 requests switch it off.
        # top_k=0 disables transformers' implicit top-k of 50, matching vLLM's default (no top-k).
        gc.do_sample, gc.temperature, gc.top_p, gc.top_k = True, 1.0, 1.0, 0
        model.save_pretrained(tmp)
        proc.save_pretrained(tmp)

    return _build_once(out_dir, {"kind": "qwen2_5_vl", "seed": seed, "version": _FORMAT_VERSION}, build)


def build_tiny_open_clip(out_dir: str | os.PathLike, seed: int = 0, embed_dim: int = 64) -> Path:
    """A ~3.4 M-parameter random CLIP in open_clip's `local-dir:` format (open_clip_config.json +
    open_clip_model.safetensors); the tokenizer is open_clip's bundled CLIP BPE, so no files are needed for it.
    Load with `open_clip.create_model_and_transforms(f"local-dir:{path}")`."""

    def build(tmp: Path) -> None:
        import open_clip
        import torch
        from safetensors.torch import save_file

        model_cfg = {
            "embed_dim": embed_dim,
            "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
        }
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = open_clip.CLIP(**model_cfg).eval()
        preprocess_cfg = {
            "size": 224,
            "mean": [0.48145466, 0.4578275, 0.40821073],
            "std": [0.26862954, 0.26130258, 0.27577711],
            "interpolation": "bicubic",
            "resize_mode": "shortest",
        }
        (tmp / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}))
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp / "open_clip_model.safetensors"))

    want = {"kind": "open_clip", "seed": seed, "embed_dim": embed_dim, "version": _FORMAT_VERSION}
    return _build_once(out_dir, want, build)
