"""A job as the fake provider keeps it, and how the jobs it accepts behave."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from toolflows.fake_provider.content import FakeFile


@dataclass(frozen=True)
class Behaviour:
    """How a job runs: status checks answered as running before it is done, and the size
    of its output."""

    polls_until_done: int = 2
    file_size: int = 64 * 1024


@dataclass
class FakeJob:
    """Server-side state of one submitted job (mutated under the provider's lock)."""

    id: str
    provider: str
    behaviour: Behaviour
    input: Any
    files: list[FakeFile]
    created: float = field(default_factory=time.monotonic)
    created_wall: float = field(default_factory=time.time)
    polls: int = 0
    finished_wall: float | None = None

    def progress(self) -> float | None:
        """Fraction done in [0, 1) while running, None once done.

        The k-th answered status check (k <= polls_until_done) sees (k-1)/n.
        """
        n = self.behaviour.polls_until_done
        return max(self.polls - 1, 0) / n if n and self.polls <= n else self._finish()

    def _finish(self) -> None:
        if self.finished_wall is None:
            self.finished_wall = time.time()
        return None
