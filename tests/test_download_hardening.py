"""Downloads against hostile or broken servers, and storage that refuses (issue 9).

- A dripping or silent server ends in a retry, then a ``DOWNLOAD_FAILED`` warning, in
  seconds: a first-byte bound and a minimum rate (curl's --speed-limit/--speed-time).
- ``Content-Encoding`` bodies are stored decoded, counted raw against Content-Length,
  capped decoded, restarted (never resumed) when cut; a bomb never fills memory.
- Storage that fails (local OSError, S3 AccessDenied from moto's real IAM checks) is a
  ``DOWNLOAD_FAILED``, never an internal error.
- A file answered in place of JSON is checked and fetched again like a download, except
  a submit's, which is never sent again.

Every run goes over real sockets to the fake provider, on a real Prefect API.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from prefect.filesystems import LocalFileSystem
from prefect.utilities.asyncutils import run_coro_as_sync
from prefect_aws import AwsClientParameters, AwsCredentials, S3Bucket

from testkit.fake_provider import FakeProvider, Fault
from testkit.prefect_stack import moto_s3
from tests.helpers import PARAMS, fake_method, generic_definition, run
from toolflows.core.definition import MethodDefinition, PollingConfig, parse_definition
from toolflows.core.errors import ErrorCode, ToolflowsError
from toolflows.core.redact import Redactor
from toolflows.http import provider_session
from toolflows.models import ToolResult
from toolflows.storage import LocalFileStore, S3FileStore, _S3MultipartUpload, file_store_for
from toolflows.transfer import FileTarget, store_body

pytestmark = pytest.mark.usefixtures("prefect_api")

MIB = 1024 * 1024


def method_for(fake: FakeProvider, provider: str = "runway", **settings: Any) -> MethodDefinition:
    """The provider's preset aimed at the fake; ``settings``: adapterConfig or polling fields."""
    polling = {
        name: settings.pop(name) for name in list(settings) if name in PollingConfig.model_fields
    }
    method = fake_method(fake, provider, **{"max_wait_seconds": 20, **polling})
    for name, value in settings.items():
        setattr(method.adapter_config, name, value)
    return method


def cdn_requests(fake: FakeProvider) -> list[Any]:
    return fake.requests(origin="cdn")


def stored_whole(fake: FakeProvider, result: ToolResult) -> None:
    assert result.warnings == []
    (file,) = result.files
    assert file.sha256 == fake.expected_sha256(result.task_id)
    assert hashlib.sha256(file.read_bytes()).hexdigest() == file.sha256


def only_warning(result: ToolResult) -> str:
    assert result.status == "success"
    assert result.files == []
    (warning,) = result.warnings
    assert warning.code == "DOWNLOAD_FAILED"
    return warning.message


# -- 7. a stalled transfer ends -----------------------------------------------------------

# Settings small enough to see the rules act in a test: 2 kB/s over half a second.
QUICK_PACE = {
    "download_first_byte_seconds": 0.5,
    "download_min_bytes_per_second": 2000,
    "download_stall_seconds": 0.5,
}


def test_a_download_dripping_every_time_is_a_warning_in_seconds(fresh_fake):
    """500 bytes/s, every try: each is abandoned (and resumed) until the tries run out.

    Without the rule each 6 kB drip takes 12 s and finally succeeds.
    """
    fresh_fake.script(
        "runway", polls_until_done=0, file_size=6000, download_faults=[Fault.drip(0.002)] * 40
    )
    method = method_for(fresh_fake, max_wait_seconds=0.5, **QUICK_PACE)

    started = time.monotonic()
    result = run(method, PARAMS["runway"])
    elapsed = time.monotonic() - started

    message = only_warning(result)
    assert "slower than 2000 bytes/s" in message
    assert elapsed < 20
    ranges = [request.headers.get("range") for request in cdn_requests(fresh_fake)]
    assert len(ranges) > 2
    assert any(value and value.startswith("bytes=") for value in ranges)  # stalls resume


def test_a_download_that_drips_once_is_resumed_and_stored_whole(fresh_fake):
    fresh_fake.script(
        "runway", polls_until_done=0, file_size=20_000, download_faults=[Fault.drip(0.001)]
    )
    method = method_for(fresh_fake, **QUICK_PACE)

    started = time.monotonic()
    result = run(method, PARAMS["runway"])

    stored_whole(fresh_fake, result)
    assert time.monotonic() - started < 10  # the drip alone takes 20 s
    first, second = cdn_requests(fresh_fake)
    assert first.headers.get("range") is None
    offset = int(second.headers["range"].removeprefix("bytes=").rstrip("-"))
    assert 0 < offset < 20_000


def test_a_head_held_back_past_the_first_byte_bound_is_asked_again(fresh_fake):
    fresh_fake.script(
        "runway", polls_until_done=0, file_size=50_000, download_faults=[Fault.delay(4)]
    )
    method = method_for(fresh_fake, **QUICK_PACE)

    result = run(method, PARAMS["runway"])

    stored_whole(fresh_fake, result)
    first, second = cdn_requests(fresh_fake)
    assert second.time - first.time < 4  # asked again before the held-back head came


def test_the_pace_settings_are_adapter_config_keys_in_either_spelling():
    config = parse_definition(
        {
            "inventoryKey": "a",
            "name": "b",
            "endpoint": "https://api.example.com/v1/x",
            "adapterConfig": {
                "downloadFirstByteSeconds": 5,
                "download_min_bytes_per_second": 0,
                "downloadStallSeconds": 7,
            },
        }
    ).adapter_config
    assert config.download_first_byte_seconds == 5
    assert config.download_min_bytes_per_second == 0
    assert config.download_stall_seconds == 7


# -- hostile answers to a resume ------------------------------------------------------------


def test_a_range_answer_from_the_wrong_offset_is_not_stitched_in(fresh_fake):
    """The 206 has exactly the missing length, but from byte 0: the file starts over."""
    wrong_part = Fault.http(
        206,
        headers={"content-type": "video/mp4", "content-range": "bytes 0-198999/200000"},
        body=bytes(199_000),
    )
    fresh_fake.script(
        "runway",
        polls_until_done=0,
        file_size=200_000,
        download_faults=[Fault.cut(1000), wrong_part],
    )

    result = run(method_for(fresh_fake), PARAMS["runway"])

    stored_whole(fresh_fake, result)
    ranges = [request.headers.get("range") for request in cdn_requests(fresh_fake)]
    assert ranges == [None, "bytes=1000-", None]


# -- 8. encodings -----------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_an_encoded_output_is_stored_decoded(fresh_fake, encoding):
    fresh_fake.script("runway", polls_until_done=0, file_size=100_000, content_encoding=encoding)

    result = run(method_for(fresh_fake), PARAMS["runway"])

    stored_whole(fresh_fake, result)
    assert result.files[0].size == 100_000
    assert result.files[0].mimetype == "video/mp4"  # sniffed from the decoded bytes
    assert len(cdn_requests(fresh_fake)) == 1


def test_a_cut_encoded_body_is_restarted_not_resumed(fresh_fake):
    """A Range of compressed bytes cannot be trusted to continue the same stream."""
    fresh_fake.script(
        "runway",
        polls_until_done=0,
        file_size=300_000,
        content_encoding="gzip",
        download_faults=[Fault.cut(100_000)],
    )

    result = run(method_for(fresh_fake), PARAMS["runway"])

    stored_whole(fresh_fake, result)
    assert [request.headers.get("range") for request in cdn_requests(fresh_fake)] == [None, None]


def test_a_small_bomb_under_the_cap_is_stored_decoded(fresh_fake):
    fresh_fake.script("runway", polls_until_done=0, bomb_bytes=40 * MIB)

    result = run(method_for(fresh_fake), PARAMS["runway"])

    (file,) = result.files
    assert file.size == 40 * MIB
    assert file.sha256 == hashlib.sha256(bytes(40 * MIB)).hexdigest()


@pytest.mark.parametrize(
    ("headers", "body", "words"),
    [
        ({"content-encoding": "gzip"}, b"this is not gzip at all", "gzip"),
        ({"content-encoding": "br"}, b"\x1b\x03\x00\xf8\xa5", "br"),
        ({"content-encoding": "gzip"}, gzip.compress(b"subtitles " * 100)[:30], "gzip"),
    ],
    ids=["garbage", "unsupported", "truncated"],
)
@pytest.mark.parametrize("required", [False, True], ids=["warning", "required"])
def test_a_body_that_cannot_be_decoded_is_download_failed(
    fresh_fake, storage_dir, headers, body, words, required
):
    answer = Fault.http(200, headers={"content-type": "video/mp4", **headers}, body=body)
    fresh_fake.script("runway", polls_until_done=0, download_faults=[answer] * 6)
    method = method_for(fresh_fake, download="required" if required else True)

    if required:
        with pytest.raises(ToolflowsError) as raised:
            run(method, PARAMS["runway"])
        assert raised.value.code is ErrorCode.DOWNLOAD_FAILED
        message = raised.value.message
    else:
        message = only_warning(run(method, PARAMS["runway"]))
    assert words in message
    assert list(storage_dir.rglob("*.part")) == []


# -- 9. storage errors are DOWNLOAD_FAILED --------------------------------------------------


def save_local_storage(name: str, basepath: Path) -> str:
    run_coro_as_sync(LocalFileSystem(basepath=str(basepath)).asave(name, overwrite=True))
    return f"local-file-system/{name}"


@pytest.mark.parametrize("required", [False, True], ids=["warning", "required"])
def test_a_storage_directory_that_cannot_be_made_is_download_failed(fresh_fake, tmp_path, required):
    """Root ignores permissions, so the directory sits below a regular file."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    fresh_fake.script("runway", polls_until_done=0, file_size=10_000)
    method = method_for(fresh_fake, download="required" if required else True)
    method.adapter_config.storage = save_local_storage("unmakeable", blocker / "store")

    if required:
        with pytest.raises(ToolflowsError) as raised:
            run(method, PARAMS["runway"])
        assert raised.value.code is ErrorCode.DOWNLOAD_FAILED
        assert raised.value.task_id == fresh_fake.jobs("runway")[0].id
        message = raised.value.message
    else:
        message = only_warning(run(method, PARAMS["runway"]))
    assert "storing" in message and "Not a directory" in message


def test_a_name_too_long_for_the_file_system_is_download_failed(tmp_path):
    store = LocalFileStore(tmp_path)

    async def write() -> None:
        async with store.upload(f"{'x' * 300}/video.mp4") as upload:
            upload.write(b"data")

    with pytest.raises(ToolflowsError) as raised:
        asyncio.run(write())
    assert raised.value.code is ErrorCode.DOWNLOAD_FAILED
    assert "File name too long" in raised.value.message


def test_a_synchronous_answer_that_cannot_be_stored_is_download_failed(fresh_fake, tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    fresh_fake.script("openai", kind="audio", file_size=20_000)
    method = generic_definition(fresh_fake, "/v1/audio/speech")
    method["adapterConfig"]["storage"] = save_local_storage("unmakeable-sync", blocker / "s")

    with pytest.raises(ToolflowsError) as raised:
        run(method, {"model": "tts-1", "input": "hello", "voice": "alloy"})

    assert raised.value.code is ErrorCode.DOWNLOAD_FAILED
    assert "Not a directory" in raised.value.message
    assert fresh_fake.submits("openai") == 1


# S3 through moto with IAM checks on: the uploader may do anything but write objects.
DENY_WRITES = {
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Action": "s3:*", "Resource": "*"},
        {"Effect": "Deny", "Action": "s3:PutObject", "Resource": "*"},
    ],
}
ALLOW_ALL = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
}
LOCKED_BUCKET = "toolflows-locked"


class LockedS3:
    """A moto server enforcing IAM: an admin, and an uploader whose writes can be denied."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        boot = self._session("testing", "testing")
        iam = boot.client("iam", endpoint_url=endpoint)
        self.keys: dict[str, tuple[str, str]] = {}
        for user in ("admin", "uploader"):
            iam.create_user(UserName=user)
            key = iam.create_access_key(UserName=user)["AccessKey"]
            self.keys[user] = (key["AccessKeyId"], key["SecretAccessKey"])
            iam.put_user_policy(
                UserName=user, PolicyName="all", PolicyDocument=json.dumps(ALLOW_ALL)
            )
        boot.client("s3", endpoint_url=endpoint).create_bucket(Bucket=LOCKED_BUCKET)
        # From now on every request must be signed by a known user and allowed.
        httpx.post(f"{endpoint}/moto-api/reset-auth", content=b"0").raise_for_status()
        self.admin = self._session(*self.keys["admin"])

    @staticmethod
    def _session(key_id: str, secret: str) -> boto3.session.Session:
        return boto3.session.Session(
            aws_access_key_id=key_id, aws_secret_access_key=secret, region_name="us-east-1"
        )

    def client(self, service: str) -> Any:
        return self.admin.client(service, endpoint_url=self.endpoint)

    def deny_writes(self, denied: bool) -> None:
        self.client("iam").put_user_policy(
            UserName="uploader",
            PolicyName="all",
            PolicyDocument=json.dumps(DENY_WRITES if denied else ALLOW_ALL),
        )

    def save_block(self, name: str) -> str:
        key_id, secret = self.keys["uploader"]
        credentials = AwsCredentials(
            aws_access_key_id=key_id,
            aws_secret_access_key=secret,
            region_name="us-east-1",
            aws_client_parameters=AwsClientParameters(endpoint_url=self.endpoint),
        )
        bucket = S3Bucket(bucket_name=LOCKED_BUCKET, credentials=credentials)
        run_coro_as_sync(bucket.asave(name, overwrite=True))
        return f"s3-bucket/{name}"

    def leftovers(self, prefix: str) -> tuple[int, list[Any]]:
        s3 = self.client("s3")
        objects = s3.list_objects_v2(Bucket=LOCKED_BUCKET, Prefix=prefix).get("KeyCount", 0)
        uploads = s3.list_multipart_uploads(Bucket=LOCKED_BUCKET, Prefix=prefix).get("Uploads")
        return objects, uploads or []


@pytest.fixture(scope="module")
def locked_s3() -> Iterator[LockedS3]:
    with moto_s3() as endpoint:
        yield LockedS3(endpoint)


def run_into_locked_s3(fake: FakeProvider, locked: LockedS3, **config: Any) -> Any:
    fake.script("runway", polls_until_done=0, file_size=3 * MIB)
    method = method_for(fake, **config)
    method.adapter_config.storage = locked.save_block("locked-media")
    try:
        return run(method, PARAMS["runway"])
    except ToolflowsError as exc:
        return exc


@pytest.mark.parametrize("required", [False, True], ids=["warning", "required"])
def test_s3_access_denied_on_create_is_download_failed(fresh_fake, locked_s3, required):
    locked_s3.deny_writes(True)

    outcome = run_into_locked_s3(fresh_fake, locked_s3, download="required" if required else True)

    if required:
        assert isinstance(outcome, ToolflowsError), outcome
        assert outcome.code is ErrorCode.DOWNLOAD_FAILED
        message = outcome.message
    else:
        message = only_warning(outcome)
    assert "AccessDenied" in message
    assert locked_s3.leftovers("runway/") == (0, [])


def test_s3_access_denied_on_complete_aborts_and_is_download_failed(
    fresh_fake, locked_s3, monkeypatch
):
    """Writes are denied between the last part and the completion (a policy change)."""
    locked_s3.deny_writes(False)
    real_complete = _S3MultipartUpload.complete

    def complete(self: _S3MultipartUpload) -> None:
        locked_s3.deny_writes(True)
        real_complete(self)

    monkeypatch.setattr(_S3MultipartUpload, "complete", complete)

    outcome = run_into_locked_s3(fresh_fake, locked_s3)

    assert "AccessDenied" in only_warning(outcome)
    assert locked_s3.leftovers("runway/") == (0, [])


def test_an_s3_bucket_subclass_is_stored_as_s3_under_its_folder():
    class MediaBucket(S3Bucket):
        _block_type_slug = "toolflows-test-media-bucket"

    bucket = MediaBucket(bucket_name="media", bucket_folder="outputs/")

    store = file_store_for(bucket)

    assert isinstance(store, S3FileStore)
    assert store.uri_for("heygen/v/1/a.mp4") == "s3://media/outputs/heygen/v/1/a.mp4"


# -- 14. a file answered in place of JSON ---------------------------------------------------


def content_url(fake: FakeProvider, **behaviour: Any) -> tuple[str, str]:
    """The ``/content`` URL of a finished OpenAI-style video on the fake, and its id."""
    fake.script("openai", polls_until_done=0, **{"file_size": 300_000, **behaviour})
    headers = {"Authorization": f"Bearer {fake.api_keys['generic']}"}
    video = httpx.post(f"{fake.api_url}/v1/videos", json={"prompt": "a"}, headers=headers).json()
    httpx.get(f"{fake.api_url}/v1/videos/{video['id']}", headers=headers)
    return f"{fake.api_url}/v1/videos/{video['id']}/content", video["id"]


def store_answer(
    fake: FakeProvider, url: str, tmp_path: Path, refetch_url: str | None, **pace: Any
) -> Any:
    """GET ``url`` as a status/result check does, then ``store_body`` its file answer."""
    target = FileTarget(
        store=LocalFileStore(tmp_path),
        key_prefix="job",
        task_id="job",
        max_bytes=1 << 40,
        deadline=time.time() + 60,
        **pace,
    )
    headers = {"Authorization": f"Bearer {fake.api_keys['generic']}"}

    async def fetch_and_store() -> Any:
        async with (
            provider_session(fake.api_url, headers, timeout=10, redact=Redactor()) as session,
            session.stream("GET", url) as response,
        ):
            return await store_body(response, target, index=0, refetch_url=refetch_url)

    return asyncio.run(fetch_and_store())


def test_a_result_file_cut_short_is_fetched_again(fresh_fake, tmp_path):
    url, video_id = content_url(fresh_fake, download_faults=[Fault.cut(1000)])

    stored = store_answer(fresh_fake, url, tmp_path, refetch_url=url)

    assert stored.size == 300_000
    assert stored.sha256 == fresh_fake.expected_sha256(video_id)
    assert len(fresh_fake.requests(method="GET", path_prefix="/v1/videos/")) == 3  # + status


def test_a_result_file_dripping_is_fetched_again(fresh_fake, tmp_path):
    from toolflows.transfer import TransferPace

    url, video_id = content_url(fresh_fake, download_faults=[Fault.drip(0.01)])
    pace = TransferPace(first_byte_seconds=0.5, min_bytes_per_second=2000, stall_seconds=0.5)

    started = time.monotonic()
    stored = store_answer(fresh_fake, url, tmp_path, refetch_url=url, pace=pace)

    assert stored.sha256 == fresh_fake.expected_sha256(video_id)
    assert time.monotonic() - started < 10  # the drip alone takes 3,000 s


def test_a_submit_answer_cut_short_fails_and_is_not_sent_again(fresh_fake, storage_dir):
    fresh_fake.script("openai", kind="audio", file_size=20_000, submit_fault=Fault.cut(500))
    method = generic_definition(fresh_fake, "/v1/audio/speech")

    with pytest.raises(ToolflowsError) as raised:
        run(method, {"model": "tts-1", "input": "hello", "voice": "alloy"})

    assert raised.value.code is ErrorCode.DOWNLOAD_FAILED
    assert "not sent again" in raised.value.message
    assert fresh_fake.submits("openai") == 1
    assert list(storage_dir.rglob("*.part")) == []


# -- 15. an upload's source is read like a download ------------------------------------------


def test_an_upload_source_dripping_ends_the_submit_within_the_pace(fresh_fake):
    """3 kB at 100 bytes/s: without the pace rule the submit waits 30 s for it, then sends it."""
    url, _ = content_url(fresh_fake, file_size=3000, download_faults=[Fault.drip(0.01)])
    definition = generic_definition(fresh_fake, "/v2/jobs")
    definition["adapterConfig"].update(
        bodyType="multipart",
        downloadFirstByteSeconds=0.5,
        downloadMinBytesPerSecond=2000,
        downloadStallSeconds=0.5,
    )

    started = time.monotonic()
    with pytest.raises(ToolflowsError) as raised:
        run(definition, {"image": {"file": url}})

    assert time.monotonic() - started < 10
    assert raised.value.code is ErrorCode.HTTP_ERROR
    assert "fetching multipart file" in raised.value.message
    assert "slower than 2000 bytes/s" in raised.value.message
    assert fresh_fake.submits("jobs") == 0
