from testkit.fake_provider import FakeProvider
from toolflows.fake_provider import main

main(fake_type=FakeProvider)
