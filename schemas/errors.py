"""Errors a user can act on. The CLI prints str(error) as one line and exits with `exit_code`."""

from __future__ import annotations


class CirflowError(Exception):
    exit_code = 1


class ConfigError(CirflowError):
    """A config file or command-line value is invalid."""

    exit_code = 2


class AnnotationError(CirflowError):
    """A benchmark or input file has a malformed record: names the file, the record and the field."""

    exit_code = 2

    def __init__(self, file: str, record: int | str | None, field: str | None, message: str):
        self.file, self.record, self.field = str(file), record, field
        where = self.file
        if record is not None:
            where += f": record {record}"
        if field is not None:
            where += f", field '{field}'"
        super().__init__(f"{where}: {message}")


class MissingImagesError(CirflowError):
    """Images referenced by the annotations are not on disk."""

    exit_code = 2

    def __init__(self, missing: list[str], total: int, hint: str = ""):
        self.missing = missing
        shown = ", ".join(missing[:5])
        super().__init__(
            f"{len(missing)} of {total} images are missing (first: {shown}){hint}; pass --skip-image-check to ingest anyway"
        )


class StoreError(CirflowError):
    """The artifact store is inconsistent: a missing artifact, a bad shard."""


class BackendUnavailable(CirflowError):
    """A model backend cannot serve requests: server unreachable, 5xx/429/timeouts past the retries, a broken
    proxy, or an auth/configuration error. Transient, so nothing computed against it may be committed or
    cached: the stage fails with this one line, and a rerun with the backend back computes normally."""

    exit_code = 4

    def __init__(self, where: str, cause: str):
        self.where = where
        self.cause = " ".join(str(cause).split())  # one line, whatever the server or exception said
        super().__init__(f"model backend {where} is unavailable: {self.cause}")
