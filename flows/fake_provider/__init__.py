"""A fake of the providers toolflows runs against, over real HTTP (see server.FakeProvider)."""

from flows.fake_provider.model import Behaviour, FakeJob, Fault, RecordedRequest
from flows.fake_provider.server import FakeProvider, main

__all__ = ["Behaviour", "FakeJob", "FakeProvider", "Fault", "RecordedRequest", "main"]
