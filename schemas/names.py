"""Config `name` fields: a name becomes a folder or file-name part (run folders `<output_dir>/<name>/<stamp>`,
submission files, release names), so it must not carry path syntax that climbs out of its parent folder."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator


def plain_name(value: str) -> str:
    if not value or not value.strip():
        raise ValueError("must not be empty")
    if "/" in value or "\\" in value or "\0" in value:
        raise ValueError(f"{value!r} must be a plain name: no '/', '\\\\' or NUL (it names a folder under output_dir)")
    if value in (".", ".."):
        raise ValueError(f"{value!r} is not a usable folder name")
    return value


# A `name` config field: `name: Name = "pefuse"`.
Name = Annotated[str, AfterValidator(plain_name)]
