"""S3 result storage through prefect-aws, against a real S3 API (moto's server)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import httpx
import pytest
from prefect.settings import PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK, temporary_settings
from prefect.utilities.asyncutils import run_coro_as_sync

from flows.fake_provider import Fault
from flows.storage import S3_PART_BYTES
from tests.helpers import PARAMS, fake_method, run
from tests.prefect_stack import moto_s3, save_s3_bucket

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


def test_a_64_mib_output_streams_into_s3(fresh_fake, s3):
    size = 64 * 1024 * 1024 + 123
    fresh_fake.script("runway", file_size=size)
    method = fake_method(fresh_fake, "runway")
    method.adapter_config.storage = BLOCK

    result = run(method, PARAMS["runway"])

    file = result.files[0]
    key = f"runway/image_to_video/{result.task_id}/{file.filename}"
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
    from flows.pipelines import continue_with_file

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
