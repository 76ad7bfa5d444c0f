"""Download step: store every output of a finished job; a failure is a warning unless
``download: "required"``.

An output URL is fetched by a ``Transfer`` (resumed, retried, checked) with the
method's credentials only on the endpoint's own origin (SPEC §7); a ``data:``
URI is decoded and stored the same way. A signed URL refused as expired is
signed afresh by asking once more where the outputs came from.
"""

from __future__ import annotations

from dataclasses import replace

import httpx
from prefect import task
from prefect.logging import get_run_logger

from toolflows.core.definition import MethodDefinition
from toolflows.core.detection import OutputRef, find_outputs
from toolflows.core.errors import ErrorCode, ToolflowsError
from toolflows.core.files import decode_data_uri
from toolflows.core.templates import resolve_link
from toolflows.http import Credentials, current_session, parse_json
from toolflows.models import StoredFile, SubmittedJob, Warning_
from toolflows.transfer import FileTarget, OutputFile, Transfer, file_target

# A data: URI's bytes go to the store's writer in chunks of this size.
CHUNK_BYTES = 1024 * 1024


@task(
    name="Download outputs",
    description="Stream each output into result storage; a failure degrades to a warning.",
)
async def download_outputs(
    outputs: list[OutputRef],
    method: MethodDefinition,
    job: SubmittedJob,
    refresh_url: str | None,
    refresh_url_configured: bool = False,
) -> tuple[list[StoredFile], list[Warning_]]:
    """Store every output; return the files and a ``DOWNLOAD_FAILED`` warning per failure.

    ``refresh_url`` is the status/result URL the outputs came from: asked once
    more, it signs fresh URLs when a signed one has expired (403).
    ``refresh_url_configured``: it is the definition's template (``${VAR}`` filled).
    """
    polling = method.adapter_config.polling
    task_id = job.task_id or "job"
    target = await file_target(
        method=method, task_id=task_id, deadline=job.submitted_at + polling.max_wait_seconds
    )
    fresh_links = _FreshLinks(method, refresh_url, configured=refresh_url_configured)
    logger = get_run_logger()
    session = current_session()
    files: list[StoredFile] = []
    warnings: list[Warning_] = []
    for index, output in enumerate(outputs):
        try:
            try:
                stored = await store_output(output.url, target, index=index)
            except ToolflowsError as exc:
                fresh_url = await fresh_links.replacing(output, exc)
                if fresh_url is None:
                    raise
                logger.info("Signed URL expired; downloading a freshly signed one")
                stored = await store_output(fresh_url, target, index=index)
        except ToolflowsError as exc:
            exc.message = session.redact(exc.message)
            if polling.download == "required":
                # Whatever stopped it (a refused URL, storage), the download is what failed.
                exc.code = ErrorCode.DOWNLOAD_FAILED
                raise exc.with_task_id(job.task_id) from None
            logger.warning("Download of %s failed: %s", session.redact(output.url), exc.message)
            warnings.append(
                Warning_(
                    code=ErrorCode.DOWNLOAD_FAILED,
                    message=exc.message,
                    source_url=session.redact(output.url),
                )
            )
            continue
        logger.info("Downloaded %d bytes as %s", stored.size, stored.filename)
        files.append(stored)
    return files, warnings


class _FreshLinks:
    """Fresh signed output URLs, from one more request to the URL the outputs came from."""

    EXPIRED_STATUS = frozenset({401, 403, 410})

    def __init__(
        self, method: MethodDefinition, refresh_url: str | None, *, configured: bool
    ) -> None:
        self.method = method
        self.refresh_url = refresh_url
        self.configured = configured
        self._outputs: list[OutputRef] | None = None

    async def replacing(self, output: OutputRef, error: ToolflowsError) -> str | None:
        """A fresh URL for an output whose download was refused, or None."""
        if error.http_status not in self.EXPIRED_STATUS or self.refresh_url is None:
            return None
        if self._outputs is None:
            self._outputs = await self._fetch_outputs(self.refresh_url)
        fresh = next((item for item in self._outputs if item.path == output.path), None)
        return fresh.url if fresh and fresh.url != output.url else None

    async def _fetch_outputs(self, url: str) -> list[OutputRef]:
        polling = self.method.adapter_config.polling
        try:
            response = await current_session().request("GET", url, configured=self.configured)
            payload = parse_json(response, what="status answer") if response.is_success else None
        except (ToolflowsError, httpx.HTTPError):
            return []
        outputs = find_outputs(payload, polling.output_path, polling.download_all)
        return [replace(item, url=resolve_link(url, item.url)) for item in outputs]


async def store_output(url: str, target: FileTarget, *, index: int) -> StoredFile:
    """Store one output URL (or ``data:`` URI) with its size and sha256."""
    output = OutputFile(target, index, source_url=url)
    if url.startswith("data:"):
        return await _store_data_uri(output)
    transfer = Transfer(output, fetch_url=url, credentials=Credentials.ENDPOINT_ONLY)
    return await transfer.store()


async def _store_data_uri(output: OutputFile) -> StoredFile:
    try:
        data, declared = decode_data_uri(output.source_url)
    except ValueError as exc:
        raise ToolflowsError(ErrorCode.DOWNLOAD_FAILED, str(exc)) from None
    output.target.check_size(len(data))
    async with output.storing(
        content_type=declared, content_disposition=None, head=data[:512]
    ) as writer:
        for start in range(0, len(data), CHUNK_BYTES):
            await writer.write(data[start : start + CHUNK_BYTES])
    return output.stored(writer)
