"""The one strict base model of every config section: an unknown key is an error, never a silent default."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


__all__ = ["Strict"]
