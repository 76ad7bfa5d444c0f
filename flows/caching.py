"""Cache keys per job of a flow run: how a retried or resumed run finds what it paid for."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from prefect.cache_policies import CachePolicy
from prefect.context import TaskRunContext


@dataclass
class PerJob(CachePolicy):
    """The flow run, the job's key within it (``job_key``), and what ``identity`` adds.

    Nothing else: not the task's source (an upgrade of toolflows between a
    crash and its rerun must not pay again) and no input that holds a secret.
    """

    prefix: str = "toolflows"

    def identity(self, inputs: dict[str, Any]) -> dict[str, Any]:
        return {}

    def compute_key(
        self,
        task_ctx: TaskRunContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        if not task_ctx:
            return None
        key = {
            "flow_run": str(task_ctx.task_run.flow_run_id or task_ctx.task_run.id),
            "job_key": inputs.get("job_key", ""),
            **self.identity(inputs),
        }
        text = json.dumps(key, sort_keys=True, default=str)
        return f"{self.prefix}-{hashlib.sha256(text.encode()).hexdigest()}"
