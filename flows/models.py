"""What a run returns and what it persists between steps (SPEC §5)."""

from __future__ import annotations

from typing import Any, BinaryIO, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from toolflows.storage import PRESIGNED_LINK_SECONDS, open_stored, presigned_url


class CamelModel(BaseModel):
    """Fields in snake_case for Python, camelCase in JSON (the original system's shape)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Read back a result an older toolflows persisted (pickled): a field added
        since gets its default, so an upgrade between a crash and its rerun still
        resumes the paid job."""
        defaults = {
            name: field.get_default(call_default_factory=True)
            for name, field in type(self).model_fields.items()
            if not field.is_required()
        }
        super().__setstate__({**state, "__dict__": {**defaults, **state["__dict__"]}})


class StoredFile(CamelModel):
    """A downloaded output, persisted in result storage: a reference, never the bytes."""

    uri: str
    filename: str
    mimetype: str
    size: int
    sha256: str
    source_url: str
    storage_block: str | None = Field(
        None, exclude=True, description="The storage block holding the file, to read it back."
    )

    def open(self) -> BinaryIO:
        """A binary file object reading the stored bytes."""
        return open_stored(self.uri, self.storage_block)

    def presigned_url(self, expires_seconds: int = PRESIGNED_LINK_SECONDS) -> str:
        """An HTTPS link to the file that anyone can fetch until it expires (S3 only)."""
        return presigned_url(self.uri, self.storage_block, expires_seconds)

    def read_bytes(self) -> bytes:
        """The whole file (replaces the original system's in-memory ``buffer``)."""
        with self.open() as handle:
            return handle.read()


class Warning_(CamelModel):
    """Something that went wrong without failing the run (e.g. ``DOWNLOAD_FAILED``)."""

    code: str
    message: str
    source_url: str | None = None


class ToolResult(CamelModel):
    """A successful run: the final payload and the stored files."""

    status: Literal["success"] = "success"
    task_id: str | None
    method: str
    data: Any
    files: list[StoredFile] = Field(default_factory=list)
    filename: str | None = None
    mimetype: str | None = None
    warnings: list[Warning_] = Field(default_factory=list)


class SubmittedJob(CamelModel):
    """The submit's outcome, persisted before the first status check.

    A retried or resumed flow run reads it back instead of submitting again.
    """

    task_id: str | None
    submitted_at: float = Field(description="Wall-clock time of the submit (epoch seconds).")
    payload: Any = None
    payload_url: str = Field(description="URL that answered; relative links resolve against it.")
    status_url: str | None = None
    status_url_configured: bool = Field(
        False,
        description="The status URL is the definition's statusUrl template, whose ${VAR} are "
        "filled when it is sent; a link the provider sent never is.",
    )
    cancel_url: str | None = Field(
        None, description="The cancel link the provider sent (sent as it is, never filled)."
    )
    files: list[StoredFile] = Field(default_factory=list)
    method: str | None = Field(
        None,
        description="inventoryKey/name of the method: which of a run's methods (and "
        "credentials) a job needs when it is cancelled from persisted state.",
    )
    params: dict[str, Any] | None = Field(
        None, description="The params sent ({params.X} of a cancelUrl after the run is gone)."
    )


class ErrorResult(CamelModel):
    """A failed job, as the CLI prints it: ``{"status": "error", "error": {...}}``."""

    status: Literal["error"] = "error"
    error: dict[str, Any]


class BatchResult(CamelModel):
    """Every job of a batch, in the order of its params."""

    results: list[ToolResult | ErrorResult]

    @property
    def succeeded(self) -> list[ToolResult]:
        return [result for result in self.results if isinstance(result, ToolResult)]
