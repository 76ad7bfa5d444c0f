"""Worker side: provider presets aimed at the fake provider, and watching the engine's logs.

Imported only inside worker processes (it imports Prefect and the engine),
whose environment the driver prepared: ``PREFECT_API_URL``, the preset keys,
and ``BENCH_FAKE_API_URL``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

from toolflows.demo import retarget
from toolflows.deployments.registry import load_preset


def method_at_fake(
    preset: tuple[str, str], *, storage: str | None = None, **polling: Any
) -> dict[str, Any]:
    """The preset, unchanged but for its origin (the fake) and the given polling settings."""
    inventory_key, name = preset
    definition = retarget(load_preset(inventory_key, name), os.environ["BENCH_FAKE_API_URL"])
    config = definition.adapter_config
    config.polling = config.polling.model_copy(update=polling)
    config.storage = storage
    return definition.model_dump()


@dataclass
class LogWatch:
    """Times at which the engine logged given messages (``logging.LogRecord.created``).

    The engine logs ``Task <id> status: <status>`` right after it parsed a
    status answer: the moment the flow *saw* the status, measured without
    touching the engine.
    """

    logger_name: str
    template: str
    seen: list[tuple[float, tuple[Any, ...]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        watch = self

        class _Handler(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                if record.msg == watch.template:
                    watch.seen.append((record.created, tuple(record.args or ())))

        self._handler = _Handler(level=logging.INFO)
        logging.getLogger(self.logger_name).addHandler(self._handler)

    def close(self) -> None:
        logging.getLogger(self.logger_name).removeHandler(self._handler)
