"""toolflows: asynchronous generation APIs as Prefect flows.

```python
from toolflows import execute_method, run_tool_method
result = execute_method("heygen", "create_avatar_video_v2", {...})
```

The public names are loaded lazily so that ``toolflows.core`` (the pure rules)
can be imported and tested without importing Prefect.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from toolflows.batch import run_batch
    from toolflows.blocks import ToolMethod
    from toolflows.core.errors import ErrorCode, ToolflowsError
    from toolflows.engine import execute_method, run_tool_method
    from toolflows.models import StoredFile, ToolResult

_PUBLIC = {
    "execute_method": "toolflows.engine",
    "run_tool_method": "toolflows.engine",
    "run_batch": "toolflows.batch",
    "ToolMethod": "toolflows.blocks",
    "ToolResult": "toolflows.models",
    "StoredFile": "toolflows.models",
    "ToolflowsError": "toolflows.core.errors",
    "ErrorCode": "toolflows.core.errors",
}

__all__ = [
    "ErrorCode",
    "StoredFile",
    "ToolMethod",
    "ToolResult",
    "ToolflowsError",
    "execute_method",
    "run_batch",
    "run_tool_method",
]


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'toolflows' has no attribute {name!r}")
    return getattr(import_module(_PUBLIC[name]), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
