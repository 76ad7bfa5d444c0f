"""What toolflows stores in Prefect: the ``ToolMethod`` block."""

from toolflows.blocks.tool_method import ToolMethod

__all__ = ["ToolMethod"]
