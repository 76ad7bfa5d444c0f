"""What a run shows in Prefect: artifacts in the UI and events for automations.

Each job keeps a ``JobJournal`` (status history, checks made, progress) while
it runs; at the end the journal becomes a summary artifact, each stored file a
link artifact, and the outcome a ``toolflows.job.completed`` / ``.failed``
event that automations can chain on. A batch shows one table (a row per job)
instead of an artifact per job and per file: a thousand of those would cost
the run as much as its status checks, and bury each other in the UI. None of
them carries a secret: messages are already redacted and file URIs are
storage references. Job ids and statuses come from the provider: they are shown
cut and with their controls escaped (``display_text``), and markdown-escaped in
the summary, so that no answer can forge its table or slip a link into it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from prefect.artifacts import (
    acreate_link_artifact,
    acreate_markdown_artifact,
    acreate_progress_artifact,
    acreate_table_artifact,
    aupdate_progress_artifact,
)
from prefect.events import emit_event

from toolflows.core.definition import MethodDefinition
from toolflows.core.detection import JobStatus, Progress
from toolflows.core.errors import ToolflowsError
from toolflows.core.redact import display_text
from toolflows.models import BatchResult, ToolResult

COMPLETED_EVENT = "toolflows.job.completed"
FAILED_EVENT = "toolflows.job.failed"
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()<>#|!])")


@dataclass(frozen=True)
class StatusEntry:
    at: float
    status: str
    progress: Progress | None


@dataclass
class JobJournal:
    """The story of one job, told at the end as artifacts and an event."""

    method: MethodDefinition
    task_id: str | None = None
    started_at: float = field(default_factory=time.time)
    history: list[StatusEntry] = field(default_factory=list)
    progress_artifact: UUID | None = None
    # A batch's jobs get one table for all of them instead (``publish_batch``).
    artifacts: bool = True

    @property
    def checks(self) -> int:
        return len(self.history)

    @property
    def last_status(self) -> str | None:
        return self.history[-1].status if self.history else None

    def record(self, status: JobStatus, progress: Progress | None) -> None:
        """Remember a status check (the summary folds consecutive repeats)."""
        label = status.value or status.state.value
        self.history.append(StatusEntry(time.time(), label, progress))


_current_journal: ContextVar[JobJournal | None] = ContextVar("toolflows_journal", default=None)


@contextmanager
def job_journal(method: MethodDefinition, *, artifacts: bool = True) -> Iterator[JobJournal]:
    """Open the journal of one job (each job of a batch has its own)."""
    journal = JobJournal(method=method, artifacts=artifacts)
    token = _current_journal.set(journal)
    try:
        yield journal
    finally:
        _current_journal.reset(token)


def current_journal() -> JobJournal | None:
    return _current_journal.get()


async def report_status(
    journal: JobJournal | None, status: JobStatus, progress: Progress | None
) -> None:
    """Record a status check, and move the progress artifact when the provider reports some."""
    if journal is None:
        return
    journal.record(status, progress)
    if progress is None or not journal.artifacts:
        return
    percent = 100 * progress.fraction if progress.fraction is not None else 0.0
    description = _progress_text(journal, status, progress)
    if journal.progress_artifact is None:
        journal.progress_artifact = await acreate_progress_artifact(
            progress=percent, description=description
        )
    else:
        await aupdate_progress_artifact(
            journal.progress_artifact, progress=percent, description=description
        )


def _progress_text(journal: JobJournal, status: JobStatus, progress: Progress) -> str:
    shown_status = _shown(status.value or "pending")
    text = f"{journal.method.qualified_name} job {_shown(journal.task_id)}: {shown_status}"
    if progress.queue_position is not None:
        text += f", position {progress.queue_position} in the provider's queue"
    return text


async def publish_success(result: ToolResult, journal: JobJournal) -> None:
    """Link artifacts for the files, the job summary, and the completed event."""
    if journal.progress_artifact is not None:
        await aupdate_progress_artifact(
            journal.progress_artifact, progress=100.0, description=f"{result.method}: done"
        )
    for stored in result.files if journal.artifacts else ():
        await acreate_link_artifact(
            link=stored.uri,
            link_text=stored.filename,
            description=f"{stored.filename}: {stored.mimetype}, {stored.size} bytes, from "
            f"{result.method} job {_shown(result.task_id)} (sha256 {stored.sha256})",
        )
    await _publish_outcome(
        journal,
        summary=_summary(journal, "success", result=result),
        description=f"{result.method} job {_shown(result.task_id)}",
        event=COMPLETED_EVENT,
        details={
            "files": [
                {
                    "uri": stored.uri,
                    "filename": stored.filename,
                    "mimetype": stored.mimetype,
                    "size": stored.size,
                    "sha256": stored.sha256,
                    "storageBlock": stored.storage_block,
                }
                for stored in result.files
            ],
            "warnings": [warning.code for warning in result.warnings],
        },
    )


async def publish_failure(error: ToolflowsError, journal: JobJournal) -> None:
    """The job summary and the failed event (the message is already redacted)."""
    await _publish_outcome(
        journal,
        summary=_summary(journal, "error", error=error),
        description=f"{journal.method.qualified_name} job {_shown(journal.task_id)}: {error.code}",
        event=FAILED_EVENT,
        details={"error": error.to_dict()},
    )


async def _publish_outcome(
    journal: JobJournal, *, summary: str, description: str, event: str, details: dict[str, Any]
) -> None:
    """The job's summary artifact and its outcome event, the same shape either way."""
    if journal.artifacts:
        await acreate_markdown_artifact(
            markdown=summary, key=_artifact_key(journal.method), description=description
        )
    emit_event(
        event=event,
        resource=_job_resource(journal),
        related=[_method_resource(journal.method)],
        payload={
            "method": journal.method.qualified_name,
            "taskId": _shown(journal.task_id),
            **details,
        },
    )


async def publish_batch(method: MethodDefinition, batch: BatchResult) -> None:
    """One table for a batch's jobs, in the order of their params: a row per job."""
    rows = []
    for number, item in enumerate(batch.results, start=1):
        row: dict[str, Any] = {"#": number}
        if isinstance(item, ToolResult):
            primary = item.files[0] if item.files else None
            row |= {
                "job id": _shown(item.task_id),
                "outcome": "success",
                "file": primary.uri if primary else "",
                "size": primary.size if primary else "",
                "error": "; ".join(f"{w.code}: {w.message}" for w in item.warnings),
            }
        else:
            row |= {
                "job id": _shown(item.error.get("taskId")),
                "outcome": "error",
                "file": "",
                "size": "",
                "error": f"{item.error.get('code')}: {item.error.get('message')}",
            }
        rows.append(row)
    await acreate_table_artifact(
        table=rows,
        key=f"{_artifact_key(method)}-batch"[:100],
        description=f"{method.qualified_name}: batch of {len(rows)}, "
        f"{len(batch.succeeded)} succeeded",
    )


def _job_resource(journal: JobJournal) -> dict[str, str]:
    task_id = _shown(str(journal.task_id))
    return {
        "prefect.resource.id": f"toolflows.job.{journal.method.slug}.{task_id}",
        "prefect.resource.name": f"{journal.method.qualified_name} {task_id}",
        "toolflows.method": journal.method.qualified_name,
        "toolflows.task-id": task_id,
    }


def _method_resource(method: MethodDefinition) -> dict[str, str]:
    return {
        "prefect.resource.id": f"toolflows.method.{method.slug}",
        "prefect.resource.role": "tool-method",
        "prefect.resource.name": method.qualified_name,
    }


def _artifact_key(method: MethodDefinition) -> str:
    return f"toolflows-{method.slug}"[:100]


def _summary(
    journal: JobJournal,
    outcome: str,
    *,
    result: ToolResult | None = None,
    error: ToolflowsError | None = None,
) -> str:
    verdict = f"**{outcome}**" + (f" ({error.code}: {_cell(error.message)})" if error else "")
    lines = [
        f"# {journal.method.qualified_name}",
        "",
        "| | |",
        "|---|---|",
        f"| Job id | {_cell(journal.task_id)} |",
        f"| Outcome | {verdict} |",
        f"| Status checks | {journal.checks} |",
        f"| Elapsed | {time.time() - journal.started_at:.1f} s |",
        "",
        "## Status history",
        "",
        "| time (UTC) | status | progress |",
        "|---|---|---|",
    ]
    previous = None
    for entry in journal.history:
        progress = _progress_cell(entry.progress)
        if (entry.status, progress) == previous:
            continue
        previous = (entry.status, progress)
        lines.append(f"| {_clock(entry.at)} | {_cell(entry.status)} | {progress} |")
    if result is not None:
        lines += [
            "",
            "## Files",
            "",
            "| file | type | size | sha256 | uri |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {_cell(f.filename)} | {f.mimetype} | {f.size} | `{f.sha256[:16]}…` | {f.uri} |"
            for f in result.files
        ]
        lines += [f"- warning {w.code}: {_cell(w.message)}" for w in result.warnings]
    return "\n".join(lines)


def _shown(text: str | None) -> str | None:
    """Provider text (a job id, a status) as it may be shown in Prefect."""
    return None if text is None else display_text(text)


def _cell(text: str | None) -> str:
    """Provider text in the summary's markdown: on one line, every markdown character escaped."""
    shown = display_text(str(text)).replace("\n", " ").replace("\t", " ")
    return _MARKDOWN_SPECIAL.sub(r"\\\1", shown)


def _progress_cell(progress: Progress | None) -> str:
    if progress is None:
        return ""
    parts: list[Any] = []
    if progress.fraction is not None:
        parts.append(f"{100 * progress.fraction:.0f}%")
    if progress.queue_position is not None:
        parts.append(f"queue #{progress.queue_position}")
    return ", ".join(parts)


def _clock(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%H:%M:%S")
