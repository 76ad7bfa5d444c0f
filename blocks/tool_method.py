"""The ``ToolMethod`` block: one method definition, editable in the Prefect UI."""

from __future__ import annotations

from typing import ClassVar

from prefect.blocks.core import Block
from pydantic import ConfigDict

from toolflows.core.definition import MethodDefinition


class ToolMethod(MethodDefinition, Block):
    """An asynchronous generation API method: endpoint, headers and polling settings.

    Saved under ``<inventoryKey>-<name>`` slugified; ``toolflows run`` and
    ``execute_method`` load it by that name or as ``inventoryKey/name``.

    Example:
        ```python
        from toolflows.blocks import ToolMethod
        method = ToolMethod.load("heygen-create-avatar-video-v2")
        ```
    """

    model_config = ConfigDict(extra="ignore")

    _block_type_name: ClassVar[str] = "Tool Method"
    _block_type_slug: ClassVar[str] = "tool-method"
    _description: ClassVar[str] = (
        "An asynchronous generation API method (video, avatar, voice, image): "
        "endpoint, headers and polling settings, run by toolflows as submit → poll → download."
    )

    def definition(self) -> MethodDefinition:
        """The plain definition the engine runs (no Prefect block machinery)."""
        fields = set(MethodDefinition.model_fields)
        return MethodDefinition.model_validate(self.model_dump(include=fields))
