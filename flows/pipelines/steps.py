"""How a pipeline runs one step: a method, params filled from earlier steps.

A step's params are a template: a string value that is exactly ``{name}``
becomes the named value (any JSON type); other strings are formatted with the
values (``"a cat, {style}"``). Each method gets one provider session for the
whole pipeline run (one pooled client per method, not per job).
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

from toolflows.core.definition import MethodDefinition
from toolflows.core.detection import find_outputs
from toolflows.core.errors import ErrorCode, ToolflowsError
from toolflows.engine import run_job
from toolflows.http import ProviderSession, using_session
from toolflows.methods import load_method, prepare_method, session_for, validate_params
from toolflows.models import ToolResult


def fill_params_template(template: Any, values: dict[str, Any]) -> Any:
    """The template with ``{name}`` placeholders replaced, recursively."""
    if isinstance(template, dict):
        return {key: fill_params_template(value, values) for key, value in template.items()}
    if isinstance(template, list):
        return [fill_params_template(item, values) for item in template]
    if not isinstance(template, str):
        return template
    name = template[1:-1]
    if template.startswith("{") and template.endswith("}") and name in values:
        return values[name]
    try:
        return template.format_map(values)
    except (KeyError, ValueError, IndexError) as exc:
        raise ToolflowsError(
            ErrorCode.CONFIG_INVALID,
            f"pipeline params template {template!r}: no value for {exc} "
            f"(known: {', '.join(sorted(values))})",
        ) from None


@dataclass
class Step:
    """One step of a pipeline: a method and its params template."""

    name: str
    method: str | dict[str, Any]
    params: dict[str, Any]
    definition: MethodDefinition | None = None
    session: ProviderSession | None = field(default=None, repr=False)

    async def open(self, sessions: AsyncExitStack, sample: dict[str, Any]) -> None:
        """Load and check the method (with sample values) before anything is sent."""
        self.definition = await load_method(self.method)
        validate_params(self.definition, fill_params_template(self.params, sample))
        prepared = await prepare_method(self.definition, None, submitting=False)
        self.session = await sessions.enter_async_context(session_for(prepared))

    def handoff_url(self, result: ToolResult) -> str:
        """This step's primary output as a URL the next provider can fetch: the provider's link.

        Found as the run found it (the method's ``outputPath``), so the next step gets
        the output this step stored, not whatever auto-detection would pick.
        """
        assert self.definition is not None
        polling = self.definition.adapter_config.polling
        outputs = find_outputs(result.data, polling.output_path, polling.download_all)
        if outputs:
            return outputs[0].url
        if result.files and result.files[0].uri.startswith(("http://", "https://")):
            return result.files[0].uri
        raise ToolflowsError(
            ErrorCode.TASK_FAILED,
            f"{result.method} job {result.task_id} produced no output URL to pass on",
            task_id=result.task_id,
        )

    async def run(self, values: dict[str, Any], job_key: str) -> ToolResult:
        """Run the step for one item; its failure names the step and the item."""
        assert self.definition is not None and self.session is not None
        params = fill_params_template(self.params, values)
        with using_session(self.session):
            try:
                return await run_job(self.definition, params, job_key=f"{self.name}-{job_key}")
            except ToolflowsError as error:
                error.message = f"pipeline step {self.name!r} ({job_key}) failed: {error.message}"
                raise
