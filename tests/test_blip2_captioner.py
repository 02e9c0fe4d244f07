"""The in-process BLIP-2 captioner (`mllm.backend: blip2`, issue 12 item 6): tiny random-weight
Blip2ForConditionalGeneration models with an OPT language model (LDRE: nucleus sampling, 15 captions) and a T5
one (CIReVL's FlanT5), tokenizers built here, saved with save_pretrained and loaded by the backend through the
MLLM protocol and the caption_images stage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cirflow.models.mllm.factory import load_mllm
from cirflow.models.mllm.protocol import ChatRequest
from cirflow.schemas.ldre import LDREConfig
from cirflow.schemas.mllm import MLLMConfig, SamplingParams
from cirflow.storage import ArtifactStore
from cirflow.tasks.runs import caption_images, ingest

WORDS = ("a photo of the dog cat bird car bus red blue green small large on in with and grass road sky water "
         "table man woman shirt dress standing sitting next to two three white black image describe complete "
         "detail focus objects you must especially all").split()
SPECIALS = ["<pad>", "</s>", "<unk>", "<s>"]


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(SPECIALS + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   bos_token="<s>")


def build_tiny_blip2(out: Path, lm: str, seed: int = 0) -> Path:
    import torch
    from transformers import (
        Blip2Config,
        Blip2ForConditionalGeneration,
        Blip2Processor,
        Blip2QFormerConfig,
        Blip2VisionConfig,
        BlipImageProcessor,
        OPTConfig,
        T5Config,
    )

    tok = _tokenizer()
    proc = Blip2Processor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tok,
                          num_query_tokens=4)
    image_id = tok.convert_tokens_to_ids("<image>")
    v = len(tok) + (-len(tok)) % 8
    if lm == "opt":
        text = OPTConfig(vocab_size=v, hidden_size=32, word_embed_proj_dim=32, num_hidden_layers=2, ffn_dim=37,
                         num_attention_heads=4, max_position_embeddings=128, pad_token_id=0, eos_token_id=1,
                         bos_token_id=3, tie_word_embeddings=False)
    else:
        text = T5Config(vocab_size=v, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4, pad_token_id=0,
                        eos_token_id=1, decoder_start_token_id=0, tie_word_embeddings=False)
    cfg = Blip2Config(
        vision_config=Blip2VisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                        num_attention_heads=4, image_size=32, patch_size=8).to_dict(),
        qformer_config=Blip2QFormerConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                          intermediate_size=37, encoder_hidden_size=32, vocab_size=64).to_dict(),
        text_config=text.to_dict(), num_query_tokens=4, image_token_index=image_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Blip2ForConditionalGeneration(cfg).eval()
        # random init keeps the projected query tokens tiny next to the word embeddings: scale them up so the
        # image visibly steers the caption
        model.language_projection.weight.data *= 200.0
    gc = model.generation_config
    gc.pad_token_id, gc.eos_token_id = 0, 1
    gc.decoder_start_token_id = 0 if lm == "t5" else None
    # (tie_word_embeddings off: a tiny random LM with a tied head mostly repeats its last input token)
    # random weights: keep special tokens out so every caption is words (a real captioner stops at </s>)
    gc.suppress_tokens = [0, 1, 2, 3, image_id, *range(len(tok), v)]
    model.save_pretrained(out)
    proc.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def blip2(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("blip2")
    return {"opt": build_tiny_blip2(root / "opt", "opt"), "t5": build_tiny_blip2(root / "t5", "t5")}


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("imgs")
    out = []
    for k in range(3):
        p = root / f"im{k}.png"
        Image.fromarray(np.random.default_rng(k).integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(p)
        out.append(str(p))
    return out


def _cfg(path, **kw) -> MLLMConfig:
    return MLLMConfig(**({"backend": "blip2", "model": str(path), "device": "cpu", "dtype": "float32"} | kw))


def _direct(path: Path, image: str, prompt: str, max_new: int, encoder_decoder: bool) -> str:
    """What transformers' BLIP-2 says for one image, without the backend (greedy)."""
    import torch
    from transformers import Blip2ForConditionalGeneration, Blip2Processor

    proc = Blip2Processor.from_pretrained(path)
    model = Blip2ForConditionalGeneration.from_pretrained(path).eval()
    inputs = proc(images=[Image.open(image).convert("RGB")], text=[prompt], return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=max_new, do_sample=False,
                             generation_config=model.generation_config)
    if not encoder_decoder:
        out = out[:, inputs["input_ids"].shape[1]:]
    return proc.batch_decode(out, skip_special_tokens=True)[0].strip()


@pytest.mark.parametrize("lm", ["opt", "t5"])
def test_greedy_captions_match_transformers_and_do_not_depend_on_the_batch(blip2, images, lm):
    greedy = SamplingParams(temperature=0.0, max_tokens=6)
    prompt = "a photo of" if lm == "opt" else "describe the image in complete detail"
    reqs = [ChatRequest(id=f"r{k}", prompt=prompt, images=(p,), sampling=greedy) for k, p in enumerate(images)]
    with load_mllm(_cfg(blip2[lm], batch_size=3)) as m:
        batched = m.generate(reqs, progress=False)
        alone = [m.generate([r], progress=False)[0] for r in reqs]
        assert m.describe()["language_model"] == ("OPTForCausalLM" if lm == "opt" else "T5ForConditionalGeneration")
    assert all(r.status == "ok" and r.text for r in batched)
    assert [r.text for r in batched] == [r.text for r in alone]
    want = _direct(blip2[lm], images[0], prompt, 6, lm == "t5")
    assert batched[0].text == want and want
    assert len({r.text for r in batched}) > 1  # the image reaches the language model


def test_nucleus_sampling_fifteen_captions_reproducible(blip2, images):
    # LDRE's captioner: nucleus sampling, one seeded request per caption
    s = LDREConfig().caption_sampling
    assert s.temperature > 0 and s.top_p < 1.0
    reqs = [ChatRequest(id=f"c{n}", prompt="", images=(images[0],),
                        sampling=s.model_copy(update={"seed": n, "max_tokens": 6})) for n in range(15)]
    with load_mllm(_cfg(blip2["opt"])) as m:
        a = m.generate(reqs, progress=False)
        b = m.generate(list(reversed(reqs)), progress=False)[::-1]
    assert [r.text for r in a] == [r.text for r in b] and all(r.status == "ok" for r in a)
    assert [r.seed for r in a] == list(range(15))
    assert len({r.text for r in a}) >= 8  # fifteen divergent captions, not one repeated


def test_bad_items_fail_alone(blip2, images, tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not an image")
    g = SamplingParams(max_tokens=4)
    reqs = [ChatRequest(id="ok", prompt="a photo of", images=(images[1],), sampling=g),
            ChatRequest(id="none", prompt="a photo of", sampling=g),
            ChatRequest(id="two", prompt="a photo of", images=(images[0], images[1]), sampling=g),
            ChatRequest(id="bad", prompt="a photo of", images=(str(tmp_path / "broken.png"),), sampling=g)]
    with load_mllm(_cfg(blip2["opt"])) as m:
        out = {r.id: r for r in m.generate(reqs, progress=False)}
    assert out["ok"].status == "ok"
    assert out["none"].status == "failed" and "one image per request" in out["none"].error
    assert out["two"].status == "failed" and "got 2" in out["two"].error
    assert out["bad"].status == "failed" and "cannot read image" in out["bad"].error


def test_caption_images_stage_with_blip2_opt_fifteen_samples(tmp_path, mini_bench, blip2):
    store = ArtifactStore(str(tmp_path / "store"))
    bench = ingest.run(store, "circo", str(mini_bench["circo"]))
    prompt = tmp_path / "p.txt"
    prompt.write_text("a photo of")
    sampling = LDREConfig().caption_sampling.model_copy(update={"max_tokens": 5})
    cfg = _cfg(blip2["opt"])
    art = caption_images.run(store, bench, cfg, sampling, which="references", n_samples=15, prompt=str(prompt),
                             progress=False)
    rows = art.read().to_pylist()
    refs = {q["reference_id"] for q in bench.read("queries").to_pylist()}
    assert {r["id"] for r in rows} == refs and len(rows) == 15 * len(refs)
    assert all(r["status"] == "ok" and r["text"] for r in rows)
    assert art.manifest.params["mllm"]["backend"] == "blip2"
    again = caption_images.run(store, bench, cfg, sampling, which="references", n_samples=15, prompt=str(prompt),
                               progress=False)
    assert again.report.status == "cached"
    # a different captioner decoding is a different artifact
    beams = caption_images.run(store, bench, _cfg(blip2["opt"], beams=2), sampling.model_copy(
        update={"temperature": 0.0}), which="references", prompt=str(prompt), progress=False)
    assert beams.key != art.key and beams.manifest.params["mllm"]["beams"] == 2
