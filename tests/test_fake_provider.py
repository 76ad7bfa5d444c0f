"""The fake provider speaks the real APIs' shapes over real HTTP, and misbehaves on cue.

The full fake (testkit) builds on the small one the package ships for ``toolflows demo``
and the README's walk-through; the last tests hold the shipped one to that.
"""

from __future__ import annotations

import ast
import asyncio
import base64
import hashlib
import hmac
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

import toolflows.fake_provider
from testkit.fake_provider import Behaviour, CallbackRecord, FakeProvider, Fault
from testkit.prefect_stack import free_port

HEYGEN = {"X-Api-Key": "hg_test_key"}
FAL = {"Authorization": "Key fal_test_key"}
RUNWAY = {"Authorization": "Bearer key_test", "X-Runway-Version": "2024-11-06"}
REPLICATE = {"Authorization": "Bearer r8_test"}
GENERIC = {"Authorization": "Bearer generic_test_key"}
HEYGEN_BODY = {
    "video_inputs": [
        {
            "character": {"type": "avatar", "avatar_id": "Daisy", "avatar_style": "normal"},
            "voice": {"type": "text", "input_text": "Hello", "voice_id": "v1"},
        }
    ],
    "dimension": {"width": 1280, "height": 720},
}
FAL_SUBMIT = "/fal-ai/kling-video/v2.1/standard/image-to-video"
RUNWAY_BODY = {"model": "gen4_turbo", "promptImage": "https://x/a.png", "promptText": "dolly"}
MP4_MAGIC = b"\x00\x00\x00\x18ftypmp42"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def server() -> Iterator[FakeProvider]:
    with FakeProvider() as fake:
        yield fake


@pytest.fixture
def fake(server: FakeProvider) -> FakeProvider:
    server.reset()
    return server


@pytest.fixture
def api(fake: FakeProvider) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fake.api_url, timeout=10) as client:
        yield client


@pytest.fixture
def cdn() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as client:
        yield client


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def heygen_job(api: httpx.Client) -> str:
    response = api.post("/v2/video/generate", headers=HEYGEN, json=HEYGEN_BODY)
    assert response.status_code == 200
    return response.json()["data"]["video_id"]


def heygen_status(api: httpx.Client, video_id: str) -> httpx.Response:
    return api.get("/v1/video_status.get", params={"video_id": video_id}, headers=HEYGEN)


def finish_heygen(api: httpx.Client, video_id: str) -> dict:
    while (data := heygen_status(api, video_id).json()["data"])["status"] != "completed":
        assert data["status"] in ("pending", "processing")
    return data


# -- HeyGen ---------------------------------------------------------------------------------


def test_heygen_happy_path(fake: FakeProvider, api: httpx.Client, cdn: httpx.Client) -> None:
    submitted = api.post("/v2/video/generate", headers=HEYGEN, json=HEYGEN_BODY)
    assert submitted.status_code == 200
    body = submitted.json()
    assert body["error"] is None and set(body) == {"error", "data"}
    video_id = body["data"]["video_id"]
    assert len(video_id) == 32 and int(video_id, 16) >= 0

    answers = [heygen_status(api, video_id) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 200]
    envelopes = [a.json() for a in answers]
    assert all(e["code"] == 100 and e["message"] == "Success" for e in envelopes)
    assert [e["data"]["status"] for e in envelopes] == ["pending", "processing", "completed"]
    keys = {"callback_id", "caption_url", "duration", "error", "gif_url", "id", "status"}
    keys |= {"thumbnail_url", "video_url", "video_url_caption"}
    assert keys <= set(envelopes[0]["data"])
    assert envelopes[0]["data"]["video_url"] is None

    data = envelopes[-1]["data"]
    assert data["id"] == video_id and data["error"] is None and data["duration"] > 0
    for link in ("video_url", "thumbnail_url", "gif_url"):
        assert data[link].startswith(fake.cdn_url + "/")
    query = parse_qs(urlsplit(data["video_url"]).query)
    assert {"Expires", "Signature"} <= set(query)
    video = cdn.get(data["video_url"])
    assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
    assert video.content.startswith(MP4_MAGIC) and len(video.content) == 64 * 1024
    assert sha256(video.content) == fake.expected_sha256(video_id)
    thumbnail = cdn.get(data["thumbnail_url"])
    assert thumbnail.content.startswith(b"\xff\xd8\xff")
    assert sha256(thumbnail.content) == fake.expected_sha256(video_id, 1)
    assert fake.job(video_id).polls == 3 and fake.job(video_id).status == "succeeded"


def test_heygen_failure_unknown_id_and_rate_limit(fake: FakeProvider, api: httpx.Client) -> None:
    fake.script("heygen", outcome="failure", polls_until_done=0)
    data = heygen_status(api, heygen_job(api)).json()["data"]
    assert data["status"] == "failed" and data["video_url"] is None
    assert data["error"]["code"] == 40119 and "too long" in data["error"]["detail"]

    unknown = heygen_status(api, "0" * 32)
    assert unknown.status_code == 404 and "message" in unknown.json()
    assert heygen_status(api, "").status_code == 400

    fake.script("heygen", status_faults=[Fault.http(429)])
    limited = heygen_status(api, heygen_job(api))
    assert limited.status_code == 429
    assert limited.json() == {"code": 400123, "message": "Exceed rate limit"}


# -- FAL ------------------------------------------------------------------------------------


def test_fal_happy_path(fake: FakeProvider, api: httpx.Client, cdn: httpx.Client) -> None:
    fake.script("fal", polls_until_done=4)
    submitted = api.post(FAL_SUBMIT, headers=FAL, json={"prompt": "a cat surfing"})
    assert submitted.status_code == 200
    body = submitted.json()
    request_id = body["request_id"]
    assert body["status"] == "IN_QUEUE" and isinstance(body["queue_position"], int)
    assert submitted.headers["x-fal-request-id"] == request_id
    base = f"{fake.api_url}/fal-ai/kling-video/requests/{request_id}"
    assert body["response_url"] == base
    assert body["status_url"] == base + "/status" and body["cancel_url"] == base + "/cancel"

    answers = [api.get(body["status_url"], headers=FAL, params={"logs": 1}) for _ in range(5)]
    assert [a.status_code for a in answers] == [202, 202, 202, 202, 200]
    statuses = [a.json() for a in answers]
    names = [s["status"] for s in statuses]
    assert names == ["IN_QUEUE", "IN_QUEUE", "IN_PROGRESS", "IN_PROGRESS", "COMPLETED"]
    assert statuses[0]["queue_position"] > statuses[1]["queue_position"] >= 0
    assert statuses[2]["logs"][0]["level"] == "INFO"
    assert "inference_time" in statuses[-1]["metrics"] and "error" not in statuses[-1]
    assert all(s["response_url"] == base for s in statuses)
    with_subpath = f"{fake.api_url}{FAL_SUBMIT}/requests/{request_id}/status"
    assert api.get(with_subpath, headers=FAL).status_code >= 400

    result = api.get(body["response_url"], headers=FAL)
    assert result.status_code == 200
    video = result.json()["video"]
    assert result.json()["seed"] == 1
    assert video["content_type"] == "video/mp4" and video["file_name"] == "output.mp4"
    assert video["file_size"] == 64 * 1024 and video["url"].startswith(fake.cdn_url)
    assert sha256(cdn.get(video["url"]).content) == fake.expected_sha256(request_id)


def test_fal_result_before_completion_and_failure(fake: FakeProvider, api: httpx.Client) -> None:
    body = api.post(FAL_SUBMIT, headers=FAL, json={"prompt": "x"}).json()
    early = api.get(body["response_url"], headers=FAL)
    assert early.status_code == 400 and "detail" in early.json()

    fake.script("fal", outcome="failure", polls_until_done=0)
    body = api.post(FAL_SUBMIT, headers=FAL, json={"prompt": "x"}).json()
    status = api.get(body["status_url"], headers=FAL)
    assert status.status_code == 200
    assert status.json()["status"] == "COMPLETED"
    assert status.json()["error"] == "Runner disconnected"
    assert status.json()["error_type"] == "runner_disconnected"
    result = api.get(body["response_url"], headers=FAL)
    assert result.status_code == 500
    assert result.headers["x-fal-error-type"] == "runner_disconnected"
    assert result.json() == {"detail": "Runner disconnected", "error_type": "runner_disconnected"}


def test_fal_image_app_lists_images(
    fake: FakeProvider, api: httpx.Client, cdn: httpx.Client
) -> None:
    fake.script("fal", outputs=2, polls_until_done=0)
    body = api.post("/fal-ai/flux-image/dev", headers=FAL, json={"prompt": "x"}).json()
    assert body["status_url"].endswith(f"/fal-ai/flux-image/requests/{body['request_id']}/status")
    api.get(body["status_url"], headers=FAL)
    images = api.get(body["response_url"], headers=FAL).json()["images"]
    assert len(images) == 2 and images[0]["content_type"] == "image/png"
    assert {"url", "width", "height", "content_type"} <= set(images[1])
    second = cdn.get(images[1]["url"])
    assert second.content.startswith(PNG_MAGIC)
    assert sha256(second.content) == fake.expected_sha256(body["request_id"], 1)


def test_fal_cancel(fake: FakeProvider, api: httpx.Client) -> None:
    body = api.post(FAL_SUBMIT, headers=FAL, json={"prompt": "x"}).json()
    first = api.put(body["cancel_url"], headers=FAL)
    again = api.put(body["cancel_url"], headers=FAL)
    assert (first.status_code, first.json()) == (202, {"status": "CANCELLATION_REQUESTED"})
    assert again.status_code == 202
    assert fake.job(body["request_id"]).status == "cancelled"
    assert fake.cancels("fal") == [body["request_id"]] * 2

    fake.script("fal", polls_until_done=0)
    done = api.post(FAL_SUBMIT, headers=FAL, json={"prompt": "x"}).json()
    late = api.put(done["cancel_url"], headers=FAL)
    assert (late.status_code, late.json()) == (400, {"status": "ALREADY_COMPLETED"})
    missing = api.put(f"{fake.api_url}/fal-ai/kling-video/requests/nope/cancel", headers=FAL)
    assert (missing.status_code, missing.json()) == (404, {"status": "NOT_FOUND"})


# -- Runway ---------------------------------------------------------------------------------


def test_runway_happy_path(fake: FakeProvider, api: httpx.Client, cdn: httpx.Client) -> None:
    no_version = {"Authorization": RUNWAY["Authorization"]}
    refused = api.post("/v1/image_to_video", headers=no_version, json=RUNWAY_BODY)
    assert refused.status_code == 400 and "error" in refused.json()
    assert api.post("/v1/image_to_video", headers=RUNWAY, json={}).status_code == 400

    fake.script("runway", polls_until_done=3, outputs=2)
    submitted = api.post("/v1/image_to_video", headers=RUNWAY, json=RUNWAY_BODY)
    assert submitted.status_code == 200 and list(submitted.json()) == ["id"]
    task_id = submitted.json()["id"]
    tasks = [api.get(f"/v1/tasks/{task_id}", headers=RUNWAY).json() for _ in range(4)]
    assert [t["status"] for t in tasks] == ["PENDING", "THROTTLED", "RUNNING", "SUCCEEDED"]
    assert 0 <= tasks[2]["progress"] <= 1
    assert tasks[0]["createdAt"].endswith("Z") and tasks[0]["id"] == task_id
    output = tasks[-1]["output"]
    assert isinstance(output, list) and len(output) == 2
    assert all("_jwt" in parse_qs(urlsplit(url).query) for url in output)
    second = cdn.get(output[1])
    assert second.status_code == 200
    assert sha256(second.content) == fake.expected_sha256(task_id, 1)


def test_runway_failure_and_delete(fake: FakeProvider, api: httpx.Client) -> None:
    fake.script("runway", outcome="failure", polls_until_done=0)
    task_id = api.post("/v1/image_to_video", headers=RUNWAY, json=RUNWAY_BODY).json()["id"]
    failed = api.get(f"/v1/tasks/{task_id}", headers=RUNWAY).json()
    assert failed["status"] == "FAILED" and failed["failure"] and failed["failureCode"]

    fake.script("runway")
    running = api.post("/v1/image_to_video", headers=RUNWAY, json=RUNWAY_BODY).json()["id"]
    deleted = api.delete(f"/v1/tasks/{running}", headers=RUNWAY)
    assert deleted.status_code == 204 and deleted.content == b""
    assert api.get(f"/v1/tasks/{running}", headers=RUNWAY).json()["status"] == "CANCELLED"
    assert api.delete(f"/v1/tasks/{running}", headers=RUNWAY).status_code == 204
    assert api.get(f"/v1/tasks/{running}", headers=RUNWAY).status_code == 404
    assert fake.cancels("runway") == [running, running]


# -- Replicate ------------------------------------------------------------------------------


def test_replicate_happy_path(fake: FakeProvider, api: httpx.Client, cdn: httpx.Client) -> None:
    fake.script("replicate", outputs=2)
    body = {"version": "39ed52f2a78e", "input": {"prompt": "corgi", "seed": 42}}
    created = api.post("/v1/predictions", headers=REPLICATE, json=body)
    assert created.status_code == 201
    prediction = created.json()
    assert prediction["status"] == "starting" and prediction["input"] == body["input"]
    assert prediction["error"] is None and "output" not in prediction
    get_url = f"{fake.api_url}/v1/predictions/{prediction['id']}"
    assert prediction["urls"] == {"get": get_url, "cancel": get_url + "/cancel"}

    polled = [api.get(get_url, headers=REPLICATE).json() for _ in range(3)]
    assert [p["status"] for p in polled] == ["starting", "processing", "succeeded"]
    assert polled[1]["output"] is None and polled[1]["logs"]
    done = polled[-1]
    assert "predict_time" in done["metrics"] and done["completed_at"].endswith("Z")
    assert len(done["output"]) == 2
    first = cdn.get(done["output"][0])
    assert sha256(first.content) == fake.expected_sha256(prediction["id"])

    fake.script("replicate", single_output=True, polls_until_done=0)
    model_route = "/v1/models/owner/video-model/predictions"
    single = api.post(model_route, headers=REPLICATE, json={"input": {"prompt": "x"}}).json()
    assert single["model"] == "owner/video-model"
    output = api.get(single["urls"]["get"], headers=REPLICATE).json()["output"]
    assert isinstance(output, str) and output.startswith(fake.cdn_url)


def test_replicate_prefer_wait(fake: FakeProvider, api: httpx.Client) -> None:
    body = {"version": "v", "input": {"prompt": "corgi"}}
    fake.script("replicate", polls_until_done=0)
    waited = api.post("/v1/predictions", headers={**REPLICATE, "Prefer": "wait=5"}, json=body)
    assert waited.status_code == 201 and waited.headers["preference-applied"] == "wait=5"
    assert waited.json()["status"] == "succeeded" and waited.json()["output"]

    fake.script("replicate", polls_until_done=0, data_uri_output=True, file_size=300)
    quirk = api.post("/v1/predictions", headers={**REPLICATE, "Prefer": "wait"}, json=body)
    assert quirk.headers["preference-applied"] == "wait"
    assert quirk.json()["status"] == "processing"
    uri = quirk.json()["output"][0]
    assert uri.startswith("data:video/mp4;base64,")
    decoded = base64.b64decode(uri.split(",", 1)[1])
    assert sha256(decoded) == fake.expected_sha256(quirk.json()["id"])

    fake.script("replicate", seconds_until_done=0.3)
    started = time.monotonic()
    timed = api.post("/v1/predictions", headers={**REPLICATE, "Prefer": "wait=2"}, json=body)
    assert timed.json()["status"] == "succeeded" and 0.25 < time.monotonic() - started < 1.5

    fake.script("replicate", seconds_until_done=30)
    slow = api.post("/v1/predictions", headers={**REPLICATE, "Prefer": "wait=1"}, json=body)
    assert slow.status_code == 201 and slow.json()["status"] in ("starting", "processing")


def test_replicate_failure_cancel_and_errors(fake: FakeProvider, api: httpx.Client) -> None:
    body = {"version": "v", "input": {}}
    fake.script("replicate", outcome="failure", polls_until_done=0)
    failed = api.post("/v1/predictions", headers=REPLICATE, json=body).json()
    polled = api.get(failed["urls"]["get"], headers=REPLICATE).json()
    assert (polled["status"], polled["error"], polled["output"]) == ("failed", "OOM", None)

    fake.script("replicate")
    running = api.post("/v1/predictions", headers=REPLICATE, json=body).json()
    canceled = api.post(running["urls"]["cancel"], headers=REPLICATE)
    assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"
    assert api.post(running["urls"]["cancel"], headers=REPLICATE).json()["status"] == "canceled"
    assert api.get(running["urls"]["get"], headers=REPLICATE).json()["status"] == "canceled"
    unchanged = api.post(failed["urls"]["cancel"], headers=REPLICATE).json()
    assert unchanged["status"] == "failed"

    missing = api.get("/v1/predictions/nope", headers=REPLICATE)
    assert missing.status_code == 404 and set(missing.json()) == {"title", "detail", "status"}
    invalid = api.post("/v1/predictions", headers=REPLICATE, json={"input": {}})
    assert invalid.status_code == 422 and invalid.json()["status"] == 422


# -- auth -----------------------------------------------------------------------------------

AUTH_CASES = [
    ("POST", "/v2/video/generate", {"X-Api-Key": "wrong"}, "message"),
    ("POST", FAL_SUBMIT, {"Authorization": "Key wrong"}, "detail"),
    ("POST", "/v1/image_to_video", {"X-Runway-Version": "2024-11-06"}, "error"),
    ("POST", "/v1/predictions", {"Authorization": "Bearer wrong"}, "title"),
    ("POST", "/v1beta/models/veo:predictLongRunning", {}, "error"),
    ("POST", "/v1/videos", {"Authorization": "Bearer r8_test"}, "error"),
    ("POST", "/v2/jobs", {"Authorization": "Bearer wrong"}, "error"),
    ("GET", "/v1/video_status.get?video_id=x", {}, "message"),
]


@pytest.mark.parametrize(("method", "path", "headers", "key"), AUTH_CASES)
def test_wrong_or_missing_credentials_get_401(
    fake: FakeProvider, api: httpx.Client, method: str, path: str, headers: dict, key: str
) -> None:
    response = api.request(method, path, headers=headers, json={"input": {}})
    assert response.status_code == 401
    assert key in response.json()
    assert fake.jobs() == []


# -- generic shapes -------------------------------------------------------------------------


def test_operation_style(fake: FakeProvider, api: httpx.Client, cdn: httpx.Client) -> None:
    started = api.post("/v1beta/models/veo:predictLongRunning", headers=GENERIC, json={})
    name = started.json()["name"]
    assert name.startswith("operations/")
    polled = [api.get(f"/v1beta/{name}", headers=GENERIC).json() for _ in range(3)]
    assert [p["done"] for p in polled] == [False, False, True]
    assert set(polled[0]) == {"name", "done"}
    uri = polled[-1]["response"]["generatedSamples"][0]["video"]["uri"]
    assert sha256(cdn.get(uri).content) == fake.expected_sha256(name.split("/")[1])

    fake.script("operation", outcome="failure", polls_until_done=0)
    name = api.post("/v1beta/models/veo:predictLongRunning", headers=GENERIC, json={}).json()[
        "name"
    ]
    failed = api.get(f"/v1beta/{name}", headers=GENERIC).json()
    assert failed["done"] is True and failed["error"]["code"] == 3 and "response" not in failed


def test_openai_videos_and_speech(fake: FakeProvider, api: httpx.Client) -> None:
    created = api.post("/v1/videos", headers=GENERIC, json={"model": "sora-2", "prompt": "x"})
    video = created.json()
    assert video["id"].startswith("video_") and video["status"] == "queued"
    early = api.get(f"/v1/videos/{video['id']}/content", headers=GENERIC)
    assert early.status_code == 400 and "error" in early.json()
    polled = [api.get(f"/v1/videos/{video['id']}", headers=GENERIC).json() for _ in range(3)]
    assert [p["status"] for p in polled] == ["in_progress", "in_progress", "completed"]
    assert polled[0]["progress"] < polled[1]["progress"] < polled[2]["progress"] == 100
    content = api.get(f"/v1/videos/{video['id']}/content", headers=GENERIC)
    assert content.headers["content-type"] == "video/mp4" and content.content.startswith(MP4_MAGIC)
    assert sha256(content.content) == fake.expected_sha256(video["id"])

    speech = api.post("/v1/audio/speech", headers=GENERIC, json={"model": "tts", "input": "hi"})
    assert speech.status_code == 200 and speech.headers["content-type"] == "audio/mpeg"
    assert speech.content.startswith(b"ID3")
    assert sha256(speech.content) == fake.expected_sha256(speech.headers["x-request-id"])
    assert fake.submits("openai") == 2


def test_jobs_api_answers_202_while_running(fake: FakeProvider, api: httpx.Client) -> None:
    submitted = api.post("/v2/jobs", headers=GENERIC, json={"prompt": "x"})
    job_id = submitted.json()["job"]["id"]
    polled = [api.get(f"/v2/jobs/{job_id}", headers=GENERIC) for _ in range(3)]
    assert [p.status_code for p in polled] == [202, 202, 200]
    assert polled[0].content == b""
    url = polled[-1].json()["result"]["download_url"]
    assert url.startswith(fake.cdn_url) and "." not in urlsplit(url).path.rsplit("/", 1)[1]


def test_seconds_until_done_wins_over_polls(fake: FakeProvider, api: httpx.Client) -> None:
    fake.script(seconds_until_done=0.3, polls_until_done=0)
    job_id = api.post("/v2/jobs", headers=GENERIC, json={}).json()["job"]["id"]
    assert api.get(f"/v2/jobs/{job_id}", headers=GENERIC).status_code == 202
    time.sleep(0.35)
    assert api.get(f"/v2/jobs/{job_id}", headers=GENERIC).status_code == 200


def test_unknown_routes(api: httpx.Client) -> None:
    assert api.get("/v1/nothing-here").status_code == 404
    assert api.delete("/v1/predictions", headers=REPLICATE).status_code == 405


# -- CDN ------------------------------------------------------------------------------------


def jobs_download_url(fake: FakeProvider, api: httpx.Client, **behaviour: object) -> str:
    fake.script("jobs", polls_until_done=0, **behaviour)
    job_id = api.post("/v2/jobs", headers=GENERIC, json={}).json()["job"]["id"]
    return api.get(f"/v2/jobs/{job_id}", headers=GENERIC).json()["result"]["download_url"]


def test_cdn_rejects_and_records_credentials(
    fake: FakeProvider, api: httpx.Client, cdn: httpx.Client
) -> None:
    url = jobs_download_url(fake, api)
    path = urlsplit(url).path
    attempts = [
        {"Authorization": "Bearer generic_test_key"},
        {"X-Api-Key": "anything"},
        {"Cookie": "session=1"},
        {"Proxy-Authorization": "Basic eA=="},
        {"X-Custom": "prefix-fal_test_key"},
    ]
    for headers in attempts:
        assert cdn.get(url, headers=headers).status_code == 403
    expected = [(path, h) for h in ("authorization", "x-api-key", "cookie", "proxy-authorization")]
    assert fake.credential_leaks == [*expected, (path, "x-custom")]
    assert cdn.get(url).status_code == 200


def test_cdn_ranges(fake: FakeProvider, api: httpx.Client, cdn: httpx.Client) -> None:
    url = jobs_download_url(fake, api, file_size=10_000)
    whole = cdn.get(url)
    assert whole.headers["accept-ranges"] == "bytes"
    head = cdn.head(url)
    assert head.headers["content-length"] == "10000" and head.content == b""
    tail = cdn.get(url, headers={"Range": "bytes=4000-"})
    assert tail.status_code == 206
    assert tail.headers["content-range"] == "bytes 4000-9999/10000"
    assert tail.content == whole.content[4000:]
    middle = cdn.get(url, headers={"Range": "bytes=10-19"})
    assert middle.content == whole.content[10:20]
    assert cdn.get(url, headers={"Range": "bytes=10000-"}).status_code == 416

    plain = jobs_download_url(fake, api, file_size=10_000, ranges=False)
    ignored = cdn.get(plain, headers={"Range": "bytes=4000-"})
    assert ignored.status_code == 200 and len(ignored.content) == 10_000
    assert ignored.headers["accept-ranges"] == "none"


def test_cdn_content_headers(fake: FakeProvider, api: httpx.Client, cdn: httpx.Client) -> None:
    bare = cdn.get(jobs_download_url(fake, api, content_type=""))
    assert "content-type" not in bare.headers and bare.content.startswith(MP4_MAGIC)
    octets = cdn.get(jobs_download_url(fake, api, content_type="application/octet-stream"))
    assert octets.headers["content-type"] == "application/octet-stream"
    named = 'attachment; filename="clip.mp4"'
    disposed = cdn.get(jobs_download_url(fake, api, content_disposition=named, kind="image"))
    assert disposed.headers["content-disposition"] == named
    assert disposed.content.startswith(PNG_MAGIC)


def test_large_body_streams(fake: FakeProvider, api: httpx.Client) -> None:
    size = 256 << 20
    url = jobs_download_url(fake, api, file_size=size)
    job_id = urlsplit(url).path.split("/")[2]
    digest, received = hashlib.sha256(), 0
    with httpx.stream("GET", url, timeout=30) as response:
        assert int(response.headers["content-length"]) == size
        for chunk in response.iter_raw(1 << 20):
            received += len(chunk)
            digest.update(chunk)
    assert received == size
    assert digest.hexdigest() == fake.expected_sha256(job_id)


# -- faults ---------------------------------------------------------------------------------


def test_status_429_with_retry_after(fake: FakeProvider, api: httpx.Client) -> None:
    faults = [Fault.http(429, {"Retry-After": "1"}), Fault.http(503, {"retry-after-ms": "50"})]
    fake.script("replicate", status_faults=faults, polls_until_done=1)
    prediction = api.post("/v1/predictions", headers=REPLICATE, json={"version": "v", "input": {}})
    get_url = prediction.json()["urls"]["get"]
    limited = api.get(get_url, headers=REPLICATE)
    assert limited.status_code == 429 and limited.headers["retry-after"] == "1"
    assert limited.json()["title"] == "Request was throttled"
    unavailable = api.get(get_url, headers=REPLICATE)
    assert unavailable.status_code == 503 and unavailable.headers["retry-after-ms"] == "50"
    statuses = [api.get(get_url, headers=REPLICATE).json()["status"] for _ in range(2)]
    assert statuses == ["starting", "succeeded"]
    assert fake.job(prediction.json()["id"]).polls == 2


def test_reset_raises_transport_error(fake: FakeProvider, api: httpx.Client) -> None:
    fake.script("jobs", status_faults=[Fault.reset()])
    job_id = api.post("/v2/jobs", headers=GENERIC, json={}).json()["job"]["id"]
    with pytest.raises(httpx.TransportError):
        api.get(f"/v2/jobs/{job_id}", headers=GENERIC)
    assert api.get(f"/v2/jobs/{job_id}", headers=GENERIC).status_code == 202
    assert fake.job(job_id).polls == 1


def test_cut_body_is_shorter_than_content_length(
    fake: FakeProvider, api: httpx.Client, cdn: httpx.Client
) -> None:
    url = jobs_download_url(fake, api, download_faults=[Fault.cut(1000)])
    with pytest.raises(httpx.RemoteProtocolError):
        cdn.get(url)
    job_id = urlsplit(url).path.split("/")[2]
    resumed = cdn.get(url, headers={"Range": "bytes=1000-"})
    assert resumed.status_code == 206
    first = b"".join(fake.job(job_id).files[0].chunks(0, 1000))
    assert sha256(first + resumed.content) == fake.expected_sha256(job_id)


def test_drop_after_accept_counts_the_submit(fake: FakeProvider, api: httpx.Client) -> None:
    fake.script("runway", submit_fault=Fault.drop_after_accept())
    with pytest.raises(httpx.TransportError):
        api.post("/v1/image_to_video", headers=RUNWAY, json=RUNWAY_BODY)
    assert fake.submits("runway") == 1 and len(fake.jobs("runway")) == 1
    assert api.post("/v1/image_to_video", headers=RUNWAY, json=RUNWAY_BODY).status_code == 200
    assert fake.submits("runway") == 2 and fake.submits() == 2


def test_submit_http_fault_creates_no_job(fake: FakeProvider, api: httpx.Client) -> None:
    fake.script("fal", submit_fault=Fault.http(503, body={"detail": "busy"}))
    refused = api.post(FAL_SUBMIT, headers=FAL, json={})
    assert refused.status_code == 503 and refused.json() == {"detail": "busy"}
    assert fake.jobs() == [] and fake.submits("fal") == 1
    assert api.post(FAL_SUBMIT, headers=FAL, json={}).status_code == 200


def test_delay_triggers_read_timeout(fake: FakeProvider, api: httpx.Client) -> None:
    fake.script("fal", submit_fault=Fault.delay(0.5))
    with pytest.raises(httpx.ReadTimeout):
        api.post(FAL_SUBMIT, headers=FAL, json={}, timeout=0.1)
    assert fake.submits("fal") == 1 and len(fake.jobs("fal")) == 1


def test_expired_link_then_fresh_link_works(
    fake: FakeProvider, api: httpx.Client, cdn: httpx.Client
) -> None:
    fake.script("heygen", polls_until_done=0, download_faults=[Fault.expired()])
    video_id = heygen_job(api)
    stale = finish_heygen(api, video_id)["video_url"]
    expired = cdn.get(stale)
    assert expired.status_code == 403 and b"expired" in expired.content
    assert cdn.get(stale).status_code == 403
    fresh = finish_heygen(api, video_id)["video_url"]
    assert fresh != stale
    assert sha256(cdn.get(fresh).content) == fake.expected_sha256(video_id)


def test_result_fault_hits_the_fal_result_request(fake: FakeProvider, api: httpx.Client) -> None:
    fake.script("fal", polls_until_done=0, result_faults=[Fault.http(502)])
    body = api.post(FAL_SUBMIT, headers=FAL, json={}).json()
    assert api.get(body["status_url"], headers=FAL).status_code == 200
    assert api.get(body["response_url"], headers=FAL).status_code == 502
    assert api.get(body["response_url"], headers=FAL).status_code == 200


# -- connections, recording, lifecycle ------------------------------------------------------


def test_connections_opened_proves_pooling(fake: FakeProvider) -> None:
    with httpx.Client(base_url=fake.api_url) as pooled:
        for _ in range(5):
            pooled.get("/v1/nothing")
    assert fake.connections_opened["api"] == 1
    for _ in range(3):
        with httpx.Client(base_url=fake.api_url) as fresh:
            fresh.get("/v1/nothing")
    assert fake.connections_opened == {"api": 4, "cdn": 0}


def test_requests_are_recorded_and_reset(fake: FakeProvider, api: httpx.Client) -> None:
    job_id = heygen_job(api)
    heygen_status(api, job_id)
    [submit] = fake.requests(method="POST", origin="api")
    assert submit.path == "/v2/video/generate" and submit.json() == HEYGEN_BODY
    assert submit.headers["x-api-key"] == "hg_test_key"
    [status] = fake.requests(path_prefix="/v1/video_status")
    assert status.query == {"video_id": job_id} and status.method == "GET"
    assert fake.requests(origin="cdn") == []
    fake.reset()
    assert fake.requests() == [] and fake.submits() == 0
    with pytest.raises(KeyError):
        fake.job(job_id)


def test_usable_from_inside_an_event_loop(fake: FakeProvider) -> None:
    async def run() -> list[int]:
        async with httpx.AsyncClient(base_url=fake.api_url, headers=GENERIC) as client:
            answers = await asyncio.gather(*(client.post("/v2/jobs", json={}) for _ in range(50)))
        return [a.status_code for a in answers]

    assert asyncio.run(run()) == [202] * 50
    assert fake.submits("jobs") == 50 and len({j.id for j in fake.jobs()}) == 50


def test_behaviour_is_validated(fake: FakeProvider) -> None:
    with pytest.raises(ValueError):
        Behaviour(outcome="exploded")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        fake.script(polls=3)
    with pytest.raises(ValueError):
        fake.script("nobody")


def test_main_prints_urls_and_serves() -> None:
    root = Path(__file__).resolve().parents[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "testkit.fake_provider"],
        cwd=root,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        api_line, cdn_line = process.stdout.readline(), process.stdout.readline()
        assert api_line.startswith("API  http://127.0.0.1:") and cdn_line.startswith("CDN  ")
        api_url = api_line.split()[1]
        answer = httpx.post(f"{api_url}/v2/jobs", headers=GENERIC, json={}, timeout=5)
        assert answer.status_code == 202
    finally:
        process.terminate()
        process.wait(timeout=10)


# -- the small fake the package ships -------------------------------------------------------

# The definition of README's "Adding a provider that is not a preset", its endpoint on
# the port the shipped fake was started on.
ACME = {
    "inventoryKey": "acme",
    "name": "text_to_video",
    "requestSchema": {
        "type": "object",
        "required": ["prompt"],
        "properties": {"prompt": {"type": "string"}, "model": {"type": "string"}},
    },
    "adapterConfig": {
        "headers": {"Authorization": "Bearer ${ACME_KEY}"},
        "polling": {
            "statusUrl": "/v1/videos/{id}",
            "resultUrl": "/v1/videos/{id}/content",
            "intervalSeconds": 1,
        },
    },
}
# Names only the test machinery has: none may be defined in the shipped package.
TEST_MACHINERY = ("fault", "record", "leak", "script", "misbehav", "abort", "drip", "cancel")


def test_shipped_fake_runs_the_readme_walkthrough(prefect_api: str, tmp_path: Path) -> None:
    port, cdn_port = free_port(), free_port()
    command = [sys.executable, "-m", "toolflows.fake_provider"]
    process = subprocess.Popen(
        [*command, "--port", str(port), "--cdn-port", str(cdn_port)],
        cwd=tmp_path,  # no repository on the path: the installed package alone
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        printed = [process.stdout.readline() for _ in range(4)]
        assert printed[:2] == [
            f"API  http://127.0.0.1:{port}\n",
            f"CDN  http://127.0.0.1:{cdn_port}\n",
        ]
        assert "key  generic: generic_test_key\n" in printed
        definition = tmp_path / "acme.json"
        definition.write_text(
            json.dumps({**ACME, "endpoint": f"http://127.0.0.1:{port}/v1/videos"})
        )
        params = json.dumps({"prompt": "a cat surfing", "model": "sora-2"})
        toolflows = str(Path(sys.executable).with_name("toolflows"))
        completed = subprocess.run(
            [toolflows, "run", str(definition), "--params", params],
            capture_output=True,
            text=True,
            timeout=180,
            env={**os.environ, "PREFECT_API_URL": prefect_api, "ACME_KEY": "generic_test_key"},
        )
        assert completed.returncode == 0, completed.stderr[-3000:]
        result = json.loads(completed.stdout)
        served = httpx.get(
            f"http://127.0.0.1:{port}/v1/videos/{result['taskId']}/content",
            headers=GENERIC,
            timeout=10,
        )
    finally:
        process.terminate()
        process.wait(timeout=10)
    assert result["status"] == "success" and served.content.startswith(MP4_MAGIC)
    [file] = result["files"]
    stored = Path(file["uri"].removeprefix("file://")).read_bytes()
    assert sha256(stored) == file["sha256"] == sha256(served.content)


def test_shipped_fake_holds_no_test_machinery() -> None:
    """The package's fake imports no test support and defines none of its machinery; the
    full fake extends it instead of copying it."""
    package = Path(toolflows.fake_provider.__file__).parent
    imported, defined = set(), set()
    for module in package.glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.ImportFrom):
                imported.add(node.module or "")
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                defined.add(node.name.lower())
    assert imported and defined
    assert not [name for name in imported if name.split(".")[0] in ("testkit", "tests")]
    assert not [name for name in defined if any(word in name for word in TEST_MACHINERY)]
    assert issubclass(FakeProvider, toolflows.fake_provider.FakeProvider)


# -- provider callbacks (webhooks) ----------------------------------------------------------

CALLBACK_JOB_SECONDS = 0.25
FAL_REQUESTS = "/fal-ai/kling-video/requests"


@dataclass(frozen=True)
class Received:
    """One POST the receiver got; header names are lower-case."""

    at: float
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Receiver(ThreadingHTTPServer):
    """A callback endpoint on a real socket: records every POST and answers 204."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), ReceiverHandler)
        self.received: list[Received] = []
        self.arrived = threading.Condition()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}/hooks/run/token"

    def wait_for(self, count: int, timeout: float = 5.0) -> list[Received]:
        with self.arrived:
            arrived = self.arrived.wait_for(lambda: len(self.received) >= count, timeout)
            assert arrived, f"{len(self.received)} of {count} callbacks arrived"
            return list(self.received)


class ReceiverHandler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        headers = {name.lower(): value for name, value in self.headers.items()}
        with self.server.arrived:
            self.server.received.append(Received(time.time(), self.path, headers, body))
            self.server.arrived.notify_all()
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the test reads `received`."""


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def hex_hmac(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def standard_webhooks_valid(secret: str, received: Received) -> bool:
    """The Standard Webhooks check, as a receiver of Replicate's webhooks writes it."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    headers = received.headers
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + received.body
    digest = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return f"v1,{digest}" in headers["webhook-signature"].split()


def unsigned_links(value: Any) -> Any:
    """`value` with the query of every link dropped: signed links differ by their expiry."""
    if isinstance(value, dict):
        return {key: unsigned_links(item) for key, item in value.items()}
    if isinstance(value, list):
        return [unsigned_links(item) for item in value]
    if isinstance(value, str) and value.startswith("http"):
        return value.split("?")[0]
    return value


def fal_callback(api: httpx.Client, request_id: str) -> dict[str, Any]:
    status = api.get(f"{FAL_REQUESTS}/{request_id}/status", headers=FAL).json()
    ids = {"request_id": request_id, "gateway_request_id": request_id}
    if "error" in status:
        return ids | {"status": "ERROR", "payload": None, "error": status["error"]}
    result = api.get(f"{FAL_REQUESTS}/{request_id}", headers=FAL).json()
    return ids | {"status": "OK", "payload": result, "error": None}


def heygen_callback(api: httpx.Client, video_id: str) -> dict[str, Any]:
    data = heygen_status(api, video_id).json()["data"]
    ids = {"video_id": video_id, "callback_id": "cb-1"}
    if data["status"] == "failed":
        return {
            "event_type": "avatar_video.fail",
            "event_data": ids | {"msg": data["error"]["detail"]},
        }
    return {"event_type": "avatar_video.success", "event_data": ids | {"url": data["video_url"]}}


@dataclass(frozen=True)
class Calling:
    """A provider that calls back: how a submit names the URL, what the callback must say
    (from the provider's own status answers after the end), how its signature checks."""

    name: str
    submit: Callable[[httpx.Client, str], str]
    documented: Callable[[httpx.Client, str], Any]
    cancel: Callable[[httpx.Client, str], httpx.Response]
    # None: the provider does not sign (FAL).
    signature_valid: Callable[[FakeProvider, Received], bool] | None

    def __str__(self) -> str:
        return self.name


CALLING = [
    Calling(
        "replicate",
        lambda api, url: api.post(
            "/v1/predictions",
            headers=REPLICATE,
            json={"version": "abc", "input": {"prompt": "corgi"}, "webhook": url},
        ).json()["id"],
        lambda api, job: api.get(f"/v1/predictions/{job}", headers=REPLICATE).json(),
        lambda api, job: api.post(f"/v1/predictions/{job}/cancel", headers=REPLICATE),
        lambda fake, got: standard_webhooks_valid(fake.webhook_secrets["replicate"], got),
    ),
    Calling(
        "fal",
        lambda api, url: api.post(
            FAL_SUBMIT, params={"fal_webhook": url}, headers=FAL, json={"prompt": "cat"}
        ).json()["request_id"],
        fal_callback,
        lambda api, job: api.put(f"{FAL_REQUESTS}/{job}/cancel", headers=FAL),
        None,
    ),
    Calling(
        "heygen",
        lambda api, url: api.post(
            "/v2/video/generate",
            headers=HEYGEN,
            json=HEYGEN_BODY | {"callback_url": url, "callback_id": "cb-1"},
        ).json()["data"]["video_id"],
        heygen_callback,
        lambda api, job: api.delete("/v1/video.delete", params={"video_id": job}, headers=HEYGEN),
        lambda fake, got: hmac.compare_digest(
            got.headers.get("signature", ""), hex_hmac(fake.webhook_secrets["heygen"], got.body)
        ),
    ),
    Calling(
        "jobs",
        lambda api, url: api.post(
            "/v2/jobs", headers=GENERIC, json={"prompt": "x", "callback": url}
        ).json()["job"]["id"],
        lambda api, job: api.get(f"/v2/jobs/{job}", headers=GENERIC).json(),
        lambda api, job: api.delete(f"/v2/jobs/{job}", headers=GENERIC),
        lambda fake, got: hmac.compare_digest(
            got.headers.get("x-signature", ""),
            "sha256=" + hex_hmac(fake.webhook_secrets["generic"], got.body),
        ),
    ),
]


def records_settle(fake: FakeProvider, count: int, timeout: float = 5.0) -> list[CallbackRecord]:
    """The callback records, once `count` of them are in (a record follows its answer)."""
    deadline = time.monotonic() + timeout
    while len(records := fake.callbacks) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    return records


def submit_calling(
    fake: FakeProvider, api: httpx.Client, receiver: Receiver, provider: Calling, **behaviour: Any
) -> str:
    """Submit one job to `provider` under `behaviour`, its callback aimed at `receiver`."""
    fake.script(provider.name, **behaviour)
    return provider.submit(api, receiver.url)


def assert_genuine(fake: FakeProvider, provider: Calling, got: Received, documented: Any) -> None:
    assert unsigned_links(got.json()) == unsigned_links(documented)
    assert got.headers["content-type"] == "application/json"
    assert provider.signature_valid is None or provider.signature_valid(fake, got)


@pytest.mark.parametrize("provider", CALLING, ids=str)
def test_callback_arrives_after_the_end_documented_and_signed(
    fake: FakeProvider, api: httpx.Client, receiver: Receiver, provider: Calling
) -> None:
    job_id = submit_calling(fake, api, receiver, provider, seconds_until_done=CALLBACK_JOB_SECONDS)
    [got] = receiver.wait_for(1)
    ended = fake.job(job_id).finished_wall
    assert ended is not None and ended <= got.at < ended + 1.0
    assert not fake.requests(method="GET"), "the callback came without any status check"
    assert got.path == "/hooks/run/token"
    assert_genuine(fake, provider, got, provider.documented(api, job_id))
    [record] = records_settle(fake, 1)
    assert (record.provider, record.job_id, record.event) == (provider.name, job_id, "completed")
    assert record.url == receiver.url and record.status == 204 and record.error is None
    assert not record.forged and ended <= record.sent <= got.at
    fake.reset()
    assert fake.callbacks == []


@pytest.mark.parametrize("provider", CALLING, ids=str)
def test_cancelled_job_calls_back_its_end(
    fake: FakeProvider, api: httpx.Client, receiver: Receiver, provider: Calling
) -> None:
    job_id = submit_calling(fake, api, receiver, provider, seconds_until_done=30)
    assert provider.cancel(api, job_id).status_code < 300
    [got] = receiver.wait_for(1)
    assert fake.job(job_id).outcome == "cancelled"
    assert_genuine(fake, provider, got, provider.documented(api, job_id))


def test_failed_jobs_call_back_their_failure(
    fake: FakeProvider, api: httpx.Client, receiver: Receiver
) -> None:
    fake.script(outcome="failure", failure_reason="GPU melted", polls_until_done=0)
    job_ids = [provider.submit(api, receiver.url) for provider in CALLING]
    received = receiver.wait_for(len(CALLING))
    bodies = {json.dumps(got.json(), sort_keys=True) for got in received}
    for provider, job_id in zip(CALLING, job_ids, strict=True):
        assert json.dumps(provider.documented(api, job_id), sort_keys=True) in bodies
    assert all("GPU melted" in body for body in bodies)


@pytest.mark.parametrize("provider", CALLING, ids=str)
def test_dropped_callback_is_never_sent(
    fake: FakeProvider, api: httpx.Client, receiver: Receiver, provider: Calling
) -> None:
    job_id = submit_calling(
        fake, api, receiver, provider, seconds_until_done=CALLBACK_JOB_SECONDS, callback="drop"
    )
    time.sleep(CALLBACK_JOB_SECONDS + 0.1)
    provider.documented(api, job_id)  # a status check that sees the end
    time.sleep(0.3)
    assert fake.job(job_id).finished_wall is not None
    assert receiver.received == [] and fake.callbacks == []


@pytest.mark.parametrize("provider", CALLING, ids=str)
def test_duplicated_callback_is_sent_twice_identical(
    fake: FakeProvider, api: httpx.Client, receiver: Receiver, provider: Calling
) -> None:
    job_id = submit_calling(
        fake, api, receiver, provider, seconds_until_done=CALLBACK_JOB_SECONDS, callback="duplicate"
    )
    first, second = receiver.wait_for(2)
    assert first.body == second.body and first.headers == second.headers
    assert_genuine(fake, provider, second, provider.documented(api, job_id))
    assert [r.job_id for r in records_settle(fake, 2)] == [job_id, job_id]


@pytest.mark.parametrize("provider", CALLING, ids=str)
def test_late_callback_arrives_after_its_delay(
    fake: FakeProvider, api: httpx.Client, receiver: Receiver, provider: Calling
) -> None:
    job_id = submit_calling(
        fake, api, receiver, provider, seconds_until_done=0.1, callback_delay=0.4
    )
    [got] = receiver.wait_for(1)
    ended = fake.job(job_id).finished_wall
    assert ended is not None and got.at - ended >= 0.4
    assert_genuine(fake, provider, got, provider.documented(api, job_id))


@pytest.mark.parametrize("provider", CALLING, ids=str)
def test_forged_callback_comes_before_the_end_badly_signed(
    fake: FakeProvider, api: httpx.Client, receiver: Receiver, provider: Calling
) -> None:
    job_id = submit_calling(fake, api, receiver, provider, seconds_until_done=0.5, callback="forge")
    [forged] = receiver.wait_for(1)
    assert forged.at < fake.job(job_id).created_wall + 0.5
    assert "/forged/" in forged.body.decode(), "the forgery claims an output"
    assert provider.signature_valid is None or not provider.signature_valid(fake, forged)
    genuine = receiver.wait_for(2)[1]
    ended = fake.job(job_id).finished_wall
    assert ended is not None and genuine.at >= ended > forged.at
    assert_genuine(fake, provider, genuine, provider.documented(api, job_id))
    assert [r.forged for r in records_settle(fake, 2)] == [True, False]


def test_replicate_events_filter_chooses_start_and_completed(
    fake: FakeProvider, api: httpx.Client, receiver: Receiver
) -> None:
    fake.script("replicate", seconds_until_done=CALLBACK_JOB_SECONDS)

    def submit(events: list[str]) -> str:
        body = {"version": "abc", "input": {}, "webhook": receiver.url}
        body["webhook_events_filter"] = events
        return api.post("/v1/predictions", headers=REPLICATE, json=body).json()["id"]

    both, start_only = submit(["start", "completed"]), submit(["start", "logs"])
    received = receiver.wait_for(3)
    time.sleep(0.2)
    statuses = [(got.json()["id"], got.json()["status"]) for got in receiver.received]
    assert sorted(statuses) == sorted(
        [(both, "starting"), (start_only, "starting"), (both, "succeeded")]
    )
    assert all(standard_webhooks_valid(fake.webhook_secrets["replicate"], g) for g in received)
    events = {(r.job_id, r.event) for r in records_settle(fake, 3)}
    assert events == {(both, "start"), (start_only, "start"), (both, "completed")}


def test_callback_to_a_non_loopback_url_is_refused(
    fake: FakeProvider, api: httpx.Client, receiver: Receiver
) -> None:
    """`localhost` names the receiver, but only a literal loopback address is called."""
    fake.script("jobs", polls_until_done=0)
    named = receiver.url.replace("127.0.0.1", "localhost")
    job_id = CALLING[-1].submit(api, named)
    [record] = records_settle(fake, 1)
    assert record.job_id == job_id and record.url == named
    assert record.status is None and record.error is not None and "refused" in record.error
    time.sleep(0.2)
    assert receiver.received == []
