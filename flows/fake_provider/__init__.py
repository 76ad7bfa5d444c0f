"""A fake of the providers toolflows runs against, over real HTTP (see server.FakeProvider)."""

from toolflows.fake_provider.model import Behaviour, FakeJob, Fault, RecordedRequest
from toolflows.fake_provider.server import FakeProvider, main

__all__ = ["Behaviour", "FakeJob", "FakeProvider", "Fault", "RecordedRequest", "main"]
