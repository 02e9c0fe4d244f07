"""open_clip image/text encoder: loaded once, batched, images decoded in DataLoader workers.

Outputs are always float32, L2-normalised rows (re-normalised in float32 after fp16/bf16 compute, so cosine
similarity is a plain inner product downstream). fp16/bf16 run under torch.autocast with fp32 weights:
numerically safer than casting the weights and it works the same on CPU (slow there) and CUDA.

Unreadable images never pass silently: `encode_images_safe` returns zero rows plus (index, reason) for each
failure so a stage can record them; `encode_images` raises ImageReadError naming the files.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from cirflow.models.images import load_image
from cirflow.models.weights import weights_revision
from cirflow.schemas.encoder import EncoderConfig
from cirflow.schemas.errors import CirflowError

_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


class ImageReadError(CirflowError):
    """One or more images could not be read or decoded."""

    def __init__(self, failures: list[tuple[int, str]], paths: Sequence[str]):
        self.failures = failures
        shown = "; ".join(f"{paths[i]}: {why}" for i, why in failures[:5])
        more = f" (and {len(failures) - 5} more)" if len(failures) > 5 else ""
        super().__init__(f"{len(failures)} of {len(paths)} images could not be read: {shown}{more}")


class OpenClipEncoder:
    def __init__(self, cfg: EncoderConfig):
        import open_clip  # late: importing open_clip costs ~4 s, only pay it when an encoder is built

        self.cfg = cfg
        self.device = _resolve_device(cfg.device)
        self.revision = weights_revision(cfg.model, cfg.pretrained)
        # Built-in names without weights get a seeded random init, so "random-init" embeddings are reproducible
        # and the revision string in key_fields stays honest. fork_rng keeps the caller's RNG untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model, _, preprocess = open_clip.create_model_and_transforms(
                cfg.model, pretrained=cfg.pretrained, device=self.device
            )
        self.model = model.eval()
        # the eval transform (resize, centre crop, normalise), after CIReVL's target pad when configured
        self.preprocess = (TargetPadThen(cfg.target_pad_ratio, preprocess) if cfg.preprocess == "target_pad"
                           else preprocess)
        self.tokenizer = _tokenizer(open_clip, cfg)
        self._open_clip_version = open_clip.__version__
        with torch.inference_mode(), self._autocast():
            probe = self.model.encode_text(self.tokenizer(["a"]).to(self.device))
        self.dim = int(probe.shape[-1])

    # ---- public API ---------------------------------------------------------------------------------------

    def describe(self) -> dict:
        return {
            "model": self.cfg.model,
            "pretrained": self.cfg.pretrained,
            "revision": self.revision,
            "precision": self.cfg.precision,
            "preprocess": self.cfg.preprocess,
            "device": str(self.device),
            "dim": self.dim,
            "open_clip": self._open_clip_version,
            "torch": torch.__version__,
        }

    def encode_texts(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        texts = [str(t) for t in texts]
        out = np.zeros((len(texts), self.dim), np.float32)
        starts = range(0, len(texts), self.cfg.batch_size)
        for s in _batches(starts, progress, "texts"):
            tokens = self.tokenizer(texts[s : s + self.cfg.batch_size]).to(self.device)
            with torch.inference_mode(), self._autocast():
                feats = self.model.encode_text(tokens)
            out[s : s + len(tokens)] = _normalise(feats)
        return out

    def encode_images(
        self, paths: Sequence[str], crop_boxes: Sequence[Sequence[float] | None] | None = None, progress: bool = True
    ) -> np.ndarray:
        emb, failures = self.encode_images_safe(paths, crop_boxes, progress=progress)
        if failures:
            raise ImageReadError(failures, paths)
        return emb

    def encode_images_safe(
        self, paths: Sequence[str], crop_boxes: Sequence[Sequence[float] | None] | None = None, progress: bool = True
    ) -> tuple[np.ndarray, list[tuple[int, str]]]:
        """Embeddings [N, dim] (all-zero rows where reading failed) and the failures as (row index, reason)."""
        paths = [str(p) for p in paths]
        if crop_boxes is not None and len(crop_boxes) != len(paths):
            raise ValueError(f"crop_boxes has {len(crop_boxes)} entries for {len(paths)} paths")
        out = np.zeros((len(paths), self.dim), np.float32)
        failures: list[tuple[int, str]] = []
        loader = DataLoader(
            _ImageDataset(paths, crop_boxes, self.preprocess),
            batch_size=self.cfg.batch_size,
            shuffle=False,
            num_workers=self.cfg.num_workers,
            collate_fn=_collate,
            pin_memory=self.device.type == "cuda",
            # Workers start from a clean forkserver, not by forking this process: inside a flow run the process
            # holds Prefect's threads and event loop, and a fork of a threaded process can die or deadlock.
            multiprocessing_context="forkserver" if self.cfg.num_workers > 0 else None,
        )
        for rows, pixels, bad in _batches(loader, progress, "images"):
            failures.extend(bad)
            if pixels is None:
                continue
            with torch.inference_mode(), self._autocast():
                feats = self.model.encode_image(pixels.to(self.device, non_blocking=True))
            out[rows] = _normalise(feats)
        return out, sorted(failures)

    # ---- internals ----------------------------------------------------------------------------------------

    def _autocast(self):
        dtype = _DTYPES.get(self.cfg.precision)
        return torch.autocast(device_type=self.device.type, dtype=dtype, enabled=dtype is not None)


def target_pad(image, ratio: float):
    """CIReVL's / CLIP4Cir's TargetPad: an image whose max/min side ratio is at least `ratio` is zero-padded,
    equally on both short sides (int division as theirs), to a max side / `ratio` short side; others unchanged."""
    from torchvision.transforms import functional as F

    w, h = image.size
    if max(w, h) / min(w, h) < ratio:
        return image
    scaled = max(w, h) / ratio
    hp, vp = max(int((scaled - w) / 2), 0), max(int((scaled - h) / 2), 0)
    return F.pad(image, [hp, vp, hp, vp], 0, "constant")


class TargetPadThen:
    """target_pad, then open_clip's transform (a class, not a lambda: DataLoader workers pickle it)."""

    def __init__(self, ratio: float, transform):
        self.ratio, self.transform = ratio, transform

    def __call__(self, image):
        return self.transform(target_pad(image, self.ratio))


class _ImageDataset(Dataset):
    """Decoding + preprocessing happen here, i.e. inside the DataLoader worker processes."""

    def __init__(self, paths, crop_boxes, preprocess):
        self.paths, self.crop_boxes, self.preprocess = paths, crop_boxes, preprocess

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        box = None if self.crop_boxes is None else self.crop_boxes[i]
        try:
            box = None if box is None else [float(v) for v in box]
            return i, self.preprocess(load_image(self.paths[i], box)), None
        except Exception as e:  # noqa: BLE001 - any decode error is reported per file, never swallowed
            return i, None, f"{type(e).__name__}: {e}"


def _collate(batch):
    good = [(i, x) for i, x, _ in batch if x is not None]
    bad = [(i, why) for i, x, why in batch if x is None]
    rows = np.array([i for i, _ in good], dtype=np.int64)
    pixels = torch.stack([x for _, x in good]) if good else None
    return rows, pixels, bad


def _normalise(feats: torch.Tensor) -> np.ndarray:
    f = feats.float()
    f = f / f.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return f.cpu().numpy()


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _tokenizer(open_clip, cfg: EncoderConfig):
    if cfg.tokenizer is None:
        return open_clip.get_tokenizer(cfg.model)
    # SigLIP/SigLIP2 configs name a hub tokenizer; offline we point HFTokenizer at a local copy instead,
    # keeping the config's context length and cleaning options (environment.md 3a).
    text_cfg = (open_clip.get_model_config(cfg.model) or {}).get("text_cfg", {})
    return open_clip.tokenizer.HFTokenizer(
        cfg.tokenizer,
        context_length=text_cfg.get("context_length", 64),
        tokenizer_mode=text_cfg.get("tokenizer_mode"),
        **text_cfg.get("tokenizer_kwargs", {}),
    )


def _batches(it, progress: bool, unit: str):
    """Batches advance the running stage's line ("images 3/8"), no bar of their own."""
    from cirflow.schemas.progress import step_progress

    with step_progress(len(it), unit, enabled=progress) as steps:
        for batch in it:
            yield batch
            steps.update(1)
