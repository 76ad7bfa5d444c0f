"""The full fake provider for tests and benchmarks: every provider shape, scripted
behaviour, fault injection, request recording, credential-leak detection and provider
callbacks (webhooks), built on the small fake the package ships (``toolflows.fake_provider``)."""

from testkit.fake_provider.callbacks import CallbackRecord
from testkit.fake_provider.model import Behaviour, FakeJob, Fault, RecordedRequest
from testkit.fake_provider.server import FakeProvider

__all__ = ["Behaviour", "CallbackRecord", "FakeJob", "FakeProvider", "Fault", "RecordedRequest"]
