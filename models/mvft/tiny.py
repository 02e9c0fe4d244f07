"""A tiny random-weight MVFT model (BLIP-2 ViT + Q-Former), saved exactly like a real checkpoint.

    build_tiny_mvft(dir, seed=0) -> dir      # ~0.2 M parameters, 32 px images, k = 4 query tokens, d = 16
    MVFTModel.from_pretrained(dir)

The tokenizer is a BERT WordPiece vocabulary learned locally from a small corpus (no hub). Dropout is 0 so that
a training run does not depend on how batches are split over processes (1- vs 2-process equality).

A real model: BLIP-2's ITM checkpoint is a transformers `Blip2ForImageTextRetrieval` folder with its processor,
which `MVFTModel.from_pretrained` reads directly:

    huggingface-cli download Salesforce/blip2-itm-vit-g --local-dir models/blip2-itm-vit-g   # (on a networked host)
    MVFTModel.from_pretrained("models/blip2-itm-vit-g")      # ViT-g, k = 32, d = 256

The paper initialises from BLIP-2 ViT-L (LAVIS `blip2_feature_extractor` / `pretrain_vitL`); there is no
transformers conversion of it on the hub, so convert the LAVIS checkpoint with transformers'
`models/blip_2/convert_blip_2_original_to_pytorch.py` (ITM variant) into a `Blip2ForImageTextRetrieval` folder
(qformer_config.use_qformer_text_input = true) and save its processor beside it; `from_pretrained` then loads it.
"""

from __future__ import annotations

import os
from pathlib import Path

from cirflow.models.tiny import _CORPUS, _build_once

_FORMAT_VERSION = 3  # bump when the recipe changes, so stale builds are rebuilt
# Words of the procedural mini benchmark (demo/mini_benchmark.py), so its texts tokenize to whole words.
_MINI_WORDS = ("red green blue yellow purple orange white black gray pink circle square triangle star shape colour "
               "color background make turn change into instead of to a an the is on with same but")
IMAGE_SIZE = 32


def _wordpiece_vocab(vocab_size: int = 400) -> dict[str, int]:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    # whole words + single characters (+ "##" continuations), not a trained WordPiece: the trainer breaks ties
    # between equally frequent merges differently in each process, so its vocabulary (and every token id) changed
    # from one build to the next while the weights' sha256 stayed the same
    words = {w for line in _CORPUS.splitlines() + [_MINI_WORDS]
             for w, _ in tok.pre_tokenizer.pre_tokenize_str(tok.normalizer.normalize_str(line))}
    chars = {c for w in words for c in w}
    learned = sorted(words | chars | {f"##{c}" for c in chars})[:vocab_size - len(specials)]
    # specials first, then the rest sorted: ids independent of the trainer's internal numbering
    vocab = {s: i for i, s in enumerate(specials)}
    for s in sorted(learned):
        vocab.setdefault(s, len(vocab))
    return vocab


def build_tiny_mvft(out_dir: str | os.PathLike, seed: int = 0) -> Path:
    """Build (once) a random tiny MVFT model folder; returns it."""

    def build(tmp: Path) -> None:
        import torch
        from transformers import Blip2Config, Blip2ForImageTextRetrieval, BlipImageProcessor, BertTokenizer

        from cirflow.models.mvft.model import MVFTModel, MVFTSettings

        tok = BertTokenizer(vocab=_wordpiece_vocab(), do_lower_case=True)
        proc = BlipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
        cfg = Blip2Config(
            vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                               image_size=IMAGE_SIZE, patch_size=8, initializer_range=0.15),
            qformer_config=dict(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=64, max_position_embeddings=64, cross_attention_frequency=1,
                                hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                                use_qformer_text_input=True, pad_token_id=tok.pad_token_id, initializer_range=0.15),
            text_config=dict(model_type="opt", vocab_size=8, hidden_size=8, num_hidden_layers=1, ffn_dim=8,
                             num_attention_heads=1, word_embed_proj_dim=8),  # unused by the ITM model; kept small
            num_query_tokens=4, image_text_hidden_size=16,
            # ~1/sqrt(hidden): BERT's 0.02 is tuned for 768-wide layers; at width 32 it leaves every input
            # producing almost the same features (the residual stream of the query tokens dominates)
            initializer_range=0.15,
        )
        with torch.random.fork_rng(devices=[]):  # must not disturb the caller's RNG
            torch.manual_seed(seed)
            blip = Blip2ForImageTextRetrieval(cfg)
            # BLIP-2 initialises query tokens to zeros (they are learned); random ones make the untrained k
            # tokens differ from each other, as in a pretrained checkpoint
            torch.nn.init.normal_(blip.query_tokens, std=1.0)
        MVFTModel(blip.eval(), tok, proc, MVFTSettings(max_text_length=24)).save_pretrained(tmp)

    return _build_once(out_dir, {"kind": "mvft_blip2", "seed": seed, "version": _FORMAT_VERSION}, build)
