"""A tiny random decoder LLM folder (config.json + model.safetensors + tokenizer files), built offline, for tests
and demos of CoLLM's LLM embedder Φ. Shaped like the paper's backbones at toy scale: `arch="qwen2"` (Stella-Qwen2,
table 7) or `arch="llama"` (the Mistral/SFR-Embedding-2 family: RMSNorm, SwiGLU, rotary, grouped-query
attention). The tokenizer is the byte-level BPE of cirflow.models.tiny, with an EOS token for last-token pooling.

    path = build_tiny_llm(tmp / "llm", arch="qwen2")       # AutoModel / AutoTokenizer.from_pretrained(path)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from cirflow.models.tiny import _build_once, _tiny_tokenizer_vocab

_FORMAT_VERSION = 1


def build_tiny_llm(out_dir: str | os.PathLike, arch: Literal["qwen2", "llama"] = "qwen2", seed: int = 0,
                   hidden: int = 64, layers: int = 2) -> Path:
    def build(tmp: Path) -> None:
        import torch
        from transformers import LlamaConfig, LlamaModel, Qwen2Config, Qwen2Model, Qwen2Tokenizer

        vocab, merges = _tiny_tokenizer_vocab()
        tok = Qwen2Tokenizer(vocab=vocab, merges=merges, unk_token=None, eos_token="<|endoftext|>",
                             pad_token="<|endoftext|>")
        shape = dict(vocab_size=((len(tok) + 63) // 64) * 64, hidden_size=hidden, intermediate_size=2 * hidden,
                     num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                     max_position_embeddings=512, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                     bos_token_id=tok.eos_token_id)
        cfg = Qwen2Config(**shape) if arch == "qwen2" else LlamaConfig(**shape)
        with torch.random.fork_rng(devices=[]):  # building must not disturb the caller's RNG
            torch.manual_seed(seed)
            model = (Qwen2Model if arch == "qwen2" else LlamaModel)(cfg).eval()
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)

    want = {"kind": f"llm_{arch}", "seed": seed, "hidden": hidden, "layers": layers, "version": _FORMAT_VERSION}
    return _build_once(out_dir, want, build)
