"""Thumbnails of the report: made once per run folder (`thumbs/`, named by what they show), so rebuilding a
report or paging through it never decodes a full-size image again."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Callable

from PIL import Image

from cirflow.storage.writers import temp_name

SIZE = 160  # px, the longer side: enough to tell images apart, small enough for 50 queries × top-10 per page
FOLDER = "thumbs"


class Thumbs:
    """Relative paths (from the run folder) of JPEG thumbnails; None where the image cannot be read, so the
    page shows a placeholder instead of a broken image."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        (self.run_dir / FOLDER).mkdir(parents=True, exist_ok=True)
        self.made = 0
        self.missing: list[str] = []
        self._seen: dict[str, str | None] = {}

    def _get(self, name: str, load: Callable[[], Image.Image], what: str) -> str | None:
        if name in self._seen:
            return self._seen[name]
        rel = f"{FOLDER}/{name}.jpg"
        out = self.run_dir / rel
        if not out.exists():
            try:
                img = load()
                img.thumbnail((SIZE, SIZE))
                buf = io.BytesIO()
                img.convert("RGB").save(buf, "JPEG", quality=80)
            except Exception as e:  # noqa: BLE001 - one unreadable image must not cost the whole report
                self.missing.append(f"{what}: {type(e).__name__}: {e}")
                self._seen[name] = None
                return None
            # a name of this writer's own: two reports built at once must not rename each other's file away
            tmp = Path(temp_name(str(out)))
            tmp.write_bytes(buf.getvalue())
            tmp.replace(out)  # a concurrent rebuild never sees half a file
            self.made += 1
        self._seen[name] = rel
        return rel

    def image(self, path: str, crop_box=None) -> str | None:
        """A benchmark image (a path of the ingest's images table, with its GeneCIS crop)."""
        from cirflow.models.images import load_image

        name = hashlib.sha1(f"{path}|{crop_box}".encode()).hexdigest()[:20]
        return self._get(name, lambda: load_image(path, crop_box), path)

    def blob(self, read: Callable[[], bytes], sha256: str, what: str) -> str | None:
        """A generated image stored in an artifact (read only when its thumbnail does not exist yet)."""
        return self._get(f"g{sha256[:20]}", lambda: Image.open(io.BytesIO(read())), what)
