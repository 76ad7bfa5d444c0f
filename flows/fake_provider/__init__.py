"""A small fake of two provider APIs over real HTTP, for ``toolflows demo`` and trying a
definition out (see server.FakeProvider): every job succeeds."""

from toolflows.fake_provider.server import FakeProvider, main

__all__ = ["FakeProvider", "main"]
