"""S3 result storage through prefect-aws, against a real S3 API (moto's server)."""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from botocore.exceptions import ClientError
from prefect.settings import PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK, temporary_settings
from prefect.utilities.asyncutils import run_coro_as_sync
from prefect_aws import S3Bucket

from testkit.fake_provider import Fault
from testkit.prefect_stack import moto_s3, save_s3_bucket
from tests.helpers import PARAMS, fake_method, run
from tests.test_download_pipeline import cancel_by_cancel_scope, output_url, store_into
from toolflows.storage import S3_PART_BYTES, S3_PARTS_IN_FLIGHT, S3FileStore, _S3MultipartUpload

pytestmark = pytest.mark.usefixtures("prefect_api")

BUCKET = "toolflows-media"
BLOCK = "s3-bucket/toolflows-media"


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """moto's standalone S3 server on a free loopback port."""
    with moto_s3() as endpoint:
        yield endpoint


@pytest.fixture(scope="module")
def s3(s3_endpoint, prefect_api):
    """A bucket, and the S3Bucket block pointing at it (saved as ``toolflows-media``)."""
    return save_s3_bucket(s3_endpoint, BUCKET, BLOCK.split("/")[1])


def object_sha256(client, key: str) -> str:
    digest = hashlib.sha256()
    for chunk in client.get_object(Bucket=BUCKET, Key=key)["Body"].iter_chunks(1024 * 1024):
        digest.update(chunk)
    return digest.hexdigest()


def run_into_s3(fake, size: int):
    """A Runway job whose one output of ``size`` bytes is stored through the S3 block."""
    fake.script("runway", file_size=size)
    method = fake_method(fake, "runway")
    method.adapter_config.storage = BLOCK
    result = run(method, PARAMS["runway"])
    file = result.files[0]
    return result, file, f"runway/image_to_video/{result.task_id}/{file.filename}"


def test_a_64_mib_output_streams_into_s3(fresh_fake, s3):
    size = 64 * 1024 * 1024 + 123

    result, file, key = run_into_s3(fresh_fake, size)

    assert file.uri == f"s3://{BUCKET}/{key}"
    assert file.size == size
    assert object_sha256(s3, key) == file.sha256 == fresh_fake.expected_sha256(result.task_id)
    head = s3.head_object(Bucket=BUCKET, Key=key)
    assert head["ContentLength"] == size
    assert "-" in head["ETag"]  # a multipart upload, not one big PUT
    assert file.storage_block == BLOCK
    with file.open() as stored:
        assert stored.read(12) == fresh_fake_head(fresh_fake, result.task_id)


def fresh_fake_head(fake, job_id: str) -> bytes:
    job = fake.job(job_id)
    return b"".join(job.files[0].chunks(0, 12))


def test_the_prefect_default_storage_setting_selects_s3(fresh_fake, s3):
    fresh_fake.script("heygen", file_size=10_000)

    with temporary_settings({PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK: BLOCK}):
        result = run(fake_method(fresh_fake, "heygen"), PARAMS["heygen"])

    file = result.files[0]
    assert file.uri.startswith(f"s3://{BUCKET}/heygen/create_avatar_video_v2/{result.task_id}/")
    assert file.read_bytes() == b"".join(fresh_fake.job(result.task_id).files[0].chunks(0, 10_000))


def test_a_broken_upload_leaves_no_object_behind(fresh_fake, s3):
    fresh_fake.script(
        "runway",
        file_size=3 * S3_PART_BYTES,
        ranges=False,
        download_faults=[Fault.cut(S3_PART_BYTES + 5)] * 6,
    )
    method = fake_method(fresh_fake, "runway")
    method.adapter_config.storage = BLOCK

    result = run(method, PARAMS["runway"])

    assert result.files == []
    assert result.warnings[0].code == "DOWNLOAD_FAILED"
    prefix = f"runway/image_to_video/{result.task_id}/"
    assert s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("KeyCount") == 0
    assert not s3.list_multipart_uploads(Bucket=BUCKET, Prefix=prefix).get("Uploads")


def test_parts_are_sent_while_the_next_one_fills_a_few_at_once(fresh_fake, s3, monkeypatch):
    real_upload_part, real_write = _S3MultipartUpload._upload_part, _S3MultipartUpload.write
    spans: list[tuple[float, float]] = []
    queued_at_start: list[int] = []
    writes: list[float] = []

    def upload_part(self: _S3MultipartUpload, number: int, data: bytearray) -> dict[str, Any]:
        started = time.monotonic()
        queued_at_start.append(sum(not sent.done() for sent in self._sent))
        time.sleep(0.2)  # a slow S3
        answer = real_upload_part(self, number, data)
        spans.append((started, time.monotonic()))
        return answer

    def write(self: _S3MultipartUpload, chunk: bytes) -> None:
        writes.append(time.monotonic())
        real_write(self, chunk)

    monkeypatch.setattr(_S3MultipartUpload, "_upload_part", upload_part)
    monkeypatch.setattr(_S3MultipartUpload, "write", write)

    result, file, key = run_into_s3(fresh_fake, 5 * S3_PART_BYTES + 1234)

    assert object_sha256(s3, key) == file.sha256 == fresh_fake.expected_sha256(result.task_id)
    assert len(spans) == 6
    # The download went on while parts were on their way ...
    assert any(start < at < end for at in writes for start, end in spans)
    # ... but no part waited behind those in flight: memory holds one part more at most.
    assert all(queued <= S3_PARTS_IN_FLIGHT for queued in queued_at_start), queued_at_start


def test_a_part_refused_by_s3_aborts_the_upload_as_download_failed(fresh_fake, s3, monkeypatch):
    real_upload_part = _S3MultipartUpload._upload_part

    def upload_part(self: _S3MultipartUpload, number: int, data: bytearray) -> dict[str, Any]:
        if number == 2:
            error = {"Code": "SlowDown", "Message": "Please reduce your request rate."}
            raise ClientError({"Error": error}, "UploadPart")
        return real_upload_part(self, number, data)

    monkeypatch.setattr(_S3MultipartUpload, "_upload_part", upload_part)
    fresh_fake.script("runway", file_size=2 * S3_PART_BYTES + 5)
    method = fake_method(fresh_fake, "runway")
    method.adapter_config.storage = BLOCK

    result = run(method, PARAMS["runway"])

    assert result.files == []
    (warning,) = result.warnings
    assert warning.code == "DOWNLOAD_FAILED"
    assert "SlowDown" in warning.message
    prefix = f"runway/image_to_video/{result.task_id}/"
    assert s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("KeyCount") == 0
    assert not s3.list_multipart_uploads(Bucket=BUCKET, Prefix=prefix).get("Uploads")


def test_a_cancelled_download_still_aborts_its_multipart_upload(fresh_fake, s3, monkeypatch):
    """Cancelled the way Prefect's timeouts cancel: the abort must get through anyway."""
    real_upload_part = _S3MultipartUpload._upload_part
    uploading = threading.Event()

    def upload_part(self: _S3MultipartUpload, number: int, data: bytearray) -> dict[str, Any]:
        uploading.set()
        time.sleep(0.3)  # the download is cancelled meanwhile
        return real_upload_part(self, number, data)

    monkeypatch.setattr(_S3MultipartUpload, "_upload_part", upload_part)
    url, _ = output_url(fresh_fake, 6 * S3_PART_BYTES)
    store = S3FileStore(S3Bucket.load(BLOCK.split("/")[1]))

    asyncio.run(cancel_by_cancel_scope(store_into(fresh_fake, url, store), uploading))

    assert s3.list_objects_v2(Bucket=BUCKET, Prefix="job/").get("KeyCount") == 0
    assert not s3.list_multipart_uploads(Bucket=BUCKET, Prefix="job/").get("Uploads")


def test_a_presigned_url_serves_the_bytes_to_plain_httpx(fresh_fake, s3):
    fresh_fake.script("runway", file_size=50_000)
    method = fake_method(fresh_fake, "runway")
    method.adapter_config.storage = BLOCK

    file = run(method, PARAMS["runway"]).files[0]
    url = file.presigned_url(expires_seconds=600)

    response = httpx.get(url)
    assert response.status_code == 200
    assert hashlib.sha256(response.content).hexdigest() == file.sha256
    assert "Signature" in url or "X-Amz-Signature" in url


def test_a_stored_file_continues_into_the_next_method_as_a_presigned_link(fresh_fake, s3):
    from toolflows.pipelines import continue_with_file

    fresh_fake.script("fal", kind="image")
    image_method = fake_method(fresh_fake, "fal_image")
    image_method.adapter_config.storage = BLOCK
    image = run(image_method, {"prompt": "a cat"}).files[0]

    video = run_coro_as_sync(
        continue_with_file(
            fake_method(fresh_fake, "runway").model_dump(),
            {"model": "gen4_turbo", "promptImage": "{file_url}", "ratio": "1280:720"},
            image.uri,
            image.storage_block,
        )
    )

    handed_over = fresh_fake.job(video.task_id).input["promptImage"]
    fetched = httpx.get(handed_over)
    assert hashlib.sha256(fetched.content).hexdigest() == image.sha256
