"""toolflows: asynchronous generation APIs as Prefect flows.

```python
from flows import execute_method, run_tool_method
result = execute_method("heygen", "create_avatar_video_v2", {...})
```

The public names are loaded lazily so that ``flows.core`` (the pure rules)
can be imported and tested without importing Prefect.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_PUBLIC = {
    "execute_method": "flows.engine",
    "run_tool_method": "flows.engine",
    "ToolResult": "flows.models",
    "StoredFile": "flows.models",
    "ToolflowsError": "flows.core.errors",
    "ErrorCode": "flows.core.errors",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'flows' has no attribute {name!r}")
    return getattr(import_module(_PUBLIC[name]), name)
