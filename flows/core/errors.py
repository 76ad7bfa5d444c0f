"""The one error type of toolflows, with a code that tells the caller what to do."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from toolflows.core.redact import display_text


class ErrorCode(StrEnum):
    """What went wrong, and so what the caller can do about it.

    CONFIG_INVALID: fix the definition or params (nothing was submitted).
    HTTP_ERROR: the provider refused a request (see ``http_status``).
    TASK_ID_NOT_FOUND: the submit answer holds no job id nor status link.
    TASK_FAILED: the provider says the job failed (message is its reason).
    POLLING_TIMEOUT: the job did not finish before the deadline (resume with ``taskId``).
    DOWNLOAD_FAILED: an output could not be stored.
    CANCELLED: the job was cancelled, by the provider or by us.
    """

    CONFIG_INVALID = "CONFIG_INVALID"
    HTTP_ERROR = "HTTP_ERROR"
    TASK_ID_NOT_FOUND = "TASK_ID_NOT_FOUND"
    TASK_FAILED = "TASK_FAILED"
    POLLING_TIMEOUT = "POLLING_TIMEOUT"
    DOWNLOAD_FAILED = "DOWNLOAD_FAILED"
    CANCELLED = "CANCELLED"


class ToolflowsError(Exception):
    """Every failure toolflows reports, identified by ``code``.

    ``task_id`` is set whenever a job was submitted, so the user can find or
    resume it; ``http_status`` for ``HTTP_ERROR``; ``last_status`` for
    ``POLLING_TIMEOUT``. The message and last status are shown (CLI, logs, the flow
    run's state) and often quote the provider, so they are cut to a few KiB with
    their control characters escaped; ``task_id`` is kept whole, to resume the job.
    """

    def __init__(
        self,
        code: ErrorCode | str,
        message: str,
        *,
        task_id: str | None = None,
        http_status: int | None = None,
        last_status: str | None = None,
    ) -> None:
        message = display_text(message)
        super().__init__(message)
        self.code = ErrorCode(code)
        self.message = message
        self.task_id = task_id
        self.http_status = http_status
        self.last_status = None if last_status is None else display_text(last_status)

    @property
    def exit_code(self) -> int:
        """The CLI's exit status: 2 for bad usage or config, 1 for a job or HTTP error."""
        return 2 if self.code is ErrorCode.CONFIG_INVALID else 1

    def with_task_id(self, task_id: str | None) -> ToolflowsError:
        """Attach the job id once it is known (errors raised deep down do not know it)."""
        if self.task_id is None and task_id is not None:
            self.task_id = task_id
        return self

    def to_dict(self) -> dict[str, Any]:
        """The ``error`` object of SPEC §5."""
        error: dict[str, Any] = {"code": self.code.value, "message": self.message}
        if self.task_id is not None:
            error["taskId"] = self.task_id
        if self.http_status is not None:
            error["httpStatus"] = self.http_status
        if self.last_status is not None:
            error["lastStatus"] = self.last_status
        return error

    def __str__(self) -> str:
        return f"{self.code.value}: {self.message}"

    def __repr__(self) -> str:
        return f"ToolflowsError({self.code.value!r}, {self.message!r}, task_id={self.task_id!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Prefect pickles exceptions into failed states; keep the keyword fields.
        return (
            _rebuild_error,
            (self.code.value, self.message, self.task_id, self.http_status, self.last_status),
        )


def _rebuild_error(
    code: str,
    message: str,
    task_id: str | None,
    http_status: int | None,
    last_status: str | None,
) -> ToolflowsError:
    return ToolflowsError(
        code, message, task_id=task_id, http_status=http_status, last_status=last_status
    )
