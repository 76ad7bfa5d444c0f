"""The provider APIs of the full fake, shaped like the real ones, and misbehaving on cue.

HeyGen, FAL, Runway and Replicate follow the providers' documentation (envelopes, status
strings, HTTP codes, failure shapes, link fields). Three generic shapes (a Google
long-running operation, OpenAI videos + speech, a 202-while-running job API) prove the
engine is not tuned to those four. HeyGen and OpenAI videos extend the shipped fake's.

Replicate, FAL, HeyGen and the 202-while-running job API call back the URL their submit
named, in their own shapes and signatures (`callbacks`).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
import time
import uuid
from base64 import b32encode
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from email.parser import BytesParser
from email.policy import HTTP
from functools import partial
from typing import Any, ClassVar, Literal
from urllib.parse import parse_qsl

from testkit.fake_provider.callbacks import Event, Headers, hmac_hex, standard_webhooks
from testkit.fake_provider.cdn import serve_file
from testkit.fake_provider.content import DEFAULT_TYPES, EXTENSIONS, ScriptedFile, Signing
from testkit.fake_provider.faults import guarded
from testkit.fake_provider.model import Behaviour, FakeJob, Kind
from testkit.fake_provider.state import State
from toolflows.fake_provider import providers
from toolflows.fake_provider.content import MAGIC, FakeFile
from toolflows.fake_provider.http import Reply, Request
from toolflows.fake_provider.providers import Refused, Route


def _iso(ts: float, digits: int = 3) -> str:
    """RFC 3339 UTC with `digits` fractional digits (Runway: 3, Replicate: 6)."""
    text = datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")
    return text[: 20 + digits] + "Z"


class Api(providers.Api):
    """A provider whose jobs behave as scripted and whose requests meet the scripted faults."""

    job_type = FakeJob
    state: State

    def files(
        self,
        job_id: str,
        behaviour: Behaviour,
        *,
        kind: Kind | None = None,
        lists: bool = False,
        stem: str = "output",
        extension: bool = True,
        signing: Signing | None = None,
    ) -> list[FakeFile]:
        """The job's main outputs; their bytes start like `kind` unless a known type is scripted."""
        kind = behaviour.kind or kind or "video"
        scripted = behaviour.content_type
        mimetype = scripted if scripted in MAGIC else DEFAULT_TYPES[kind]
        count = behaviour.outputs if lists else 1
        stems = [stem] if count == 1 else [f"{stem}-{i}" for i in range(count)]
        suffix = f".{EXTENSIONS[mimetype]}" if extension else ""
        return [
            ScriptedFile(
                name + suffix,
                behaviour.file_size,
                mimetype,
                f"{job_id}/{name}{suffix}",
                scripted,
                behaviour.content_disposition,
                signing,
            )
            for name in stems
        ]

    def succeeded(self, job: FakeJob) -> bool:
        return super().succeeded(job) and job.outcome == "success"

    # -- callbacks (see `callbacks.Caller`): none unless a provider takes a callback URL --

    def callback_url(self, job: FakeJob) -> str | None:
        return None

    def callback_events(self, job: FakeJob) -> tuple[Event, ...]:
        return ("completed",)

    def callback_body(self, job: FakeJob, event: Event) -> Any:
        raise NotImplementedError

    def forged_body(self, job: FakeJob) -> Any:
        raise NotImplementedError

    def sign(self, body: bytes, key: bytes) -> Headers:
        return ()

    def forged_link(self, job: FakeJob) -> str:
        """An output link a forged callback claims: no such file exists."""
        return f"{self.state.cdn_url}/forged/{job.id}/output.mp4"

    def serve(self, job: FakeJob, file: FakeFile, request: Request) -> Reply:
        return serve_file(file, request, job.behaviour.ranges)

    async def submit(
        self, build: Callable[[Behaviour], FakeJob], answer: Callable[[FakeJob], Awaitable[Reply]]
    ) -> Reply:
        """Create a job under the scripted behaviour; the submit fault decides its fate."""
        behaviour, fault = self.state.take_behaviour(self.name)

        async def produce() -> Reply:
            await asyncio.sleep(behaviour.submit_seconds)
            job = self.state.add_job(build(behaviour))
            self.state.callbacks.watch(self, job)
            return await answer(job)

        return await guarded(fault, self.error, produce)

    async def poll(self, job: FakeJob, answer: Callable[[float | None], Reply]) -> Reply:
        """A status check: counted (and advancing the job) unless a fault preempts it."""
        fault = self.state.pop_fault(job, "status")
        return await guarded(fault, self.error, partial(super().poll, job, answer))

    async def fetch(
        self, job: FakeJob, which: Literal["result", "download"], answer: Callable[[], Reply]
    ) -> Reply:
        fault = self.state.pop_fault(job, which)
        return await guarded(fault, self.error, partial(super().fetch, job, which, answer))


class HeyGen(Api, providers.HeyGen):
    """The shipped HeyGen, with signed links, failures, rate limits and a delete."""

    DEFAULT_ERROR: ClassVar[dict[str, Any]] = {
        "code": 40119,
        "detail": (
            "Video is too long (> 3600.0s). Please upgrade your plan to generate longer videos"
        ),
        "message": "Video is too long",
    }

    def routes(self) -> list[Route]:
        return [
            *super().routes(),
            # Unconfirmed in the providers' documentation (no cancel endpoint): delete.
            self.route("DELETE", r"/v1/video\.delete", self.delete),
        ]

    def error(self, status: int, message: str) -> Reply:
        if status == 429:
            return Reply.json(429, {"code": 400123, "message": "Exceed rate limit"})
        return super().error(status, message)

    def outputs(self, job_id: str, behaviour: Behaviour) -> list[FakeFile]:
        """HeyGen's files; the video and thumbnail behind CloudFront-signed links."""
        video, thumbnail, gif = super().outputs(job_id, behaviour)
        signed = [ScriptedFile.of(file, "cloudfront") for file in (video, thumbnail)]
        return [*signed, ScriptedFile.of(gif)]

    def finished(self, job: FakeJob) -> dict[str, Any]:
        if job.outcome == "success":
            return super().finished(job)
        reason = job.behaviour.failure_reason
        if job.outcome == "cancelled":
            reason = "Video generation was cancelled"
        error = dict(self.DEFAULT_ERROR)
        if reason is not None:
            error |= {"detail": reason, "message": reason}
        return {"status": "failed", "error": error}

    async def delete(self, request: Request) -> Reply:
        job = self.job(request.query.get("video_id", ""), "Video not found")
        self.state.cancel(job, delete=True)
        return Reply.json(200, {"code": 100, "data": None, "message": "Success"})

    def callback_url(self, job: FakeJob) -> str | None:
        url = job.input.get("callback_url")
        return url if isinstance(url, str) else None

    @staticmethod
    def video_event(job: FakeJob, outcome: Literal["success", "fail"], **data: Any) -> Any:
        ids = {"video_id": job.id, "callback_id": job.input.get("callback_id")}
        return {"event_type": f"avatar_video.{outcome}", "event_data": ids | data}

    def callback_body(self, job: FakeJob, event: Event) -> Any:
        """avatar_video.success with the video's link, or avatar_video.fail with a `msg`."""
        if job.outcome == "success":
            return self.video_event(job, "success", url=self.url(job, job.files[0]))
        return self.video_event(job, "fail", msg=self.finished(job)["error"]["detail"])

    def forged_body(self, job: FakeJob) -> Any:
        return self.video_event(job, "success", url=self.forged_link(job))

    def sign(self, body: bytes, key: bytes) -> Headers:
        """HMAC-SHA256 hex digest of the raw body, in `Signature`."""
        return (("Signature", hmac_hex(body, key)),)


class Fal(Api):
    """FAL queue: links without the subpath, 202 while running, the output at response_url.

    Its callbacks (``?fal_webhook=``) are unsigned here: FAL signs them with ED25519 keys
    published as a JWKS, which is out of scope for the fake.
    """

    name = key_name = "fal"
    _APP = r"/(?P<app>(?!(?:v1|v1beta|v2)/)[^/]+/[^/]+)"
    _REQUEST = _APP + r"/requests/(?P<request_id>[^/]+)"

    def routes(self) -> list[Route]:
        return [
            self.route("GET", self._REQUEST + "/status", self.status),
            self.route("GET", self._REQUEST, self.result),
            self.route("PUT", self._REQUEST + "/cancel", self.cancel),
            self.route("POST", self._APP + r"(?:/[^/]+)*", self.enqueue, submit=True),
        ]

    def authorized(self, request: Request) -> bool:
        return request.headers.get("authorization") == f"Key {self.key}"

    def check(self, request: Request) -> Reply | None:
        if self.authorized(request):
            return None
        return self.error(401, "No user found for Key ID and Secret")

    def error(self, status: int, message: str) -> Reply:
        return Reply.json(status, {"detail": message})

    def links(self, job: FakeJob) -> dict[str, str]:
        base = f"{self.state.api_url}/{job.meta['app']}/requests/{job.id}"
        return {
            "response_url": base,
            "status_url": f"{base}/status",
            "cancel_url": f"{base}/cancel",
        }

    @staticmethod
    def queue_position(progress: float) -> int:
        return int((0.5 - progress) * 10)

    async def enqueue(self, request: Request, app: str) -> Reply:
        body = request.json()
        if not isinstance(body, dict):
            detail = [
                {"loc": ["body"], "msg": "Input should be a valid dictionary", "type": "dict_type"}
            ]
            return Reply.json(422, {"detail": detail})
        kind: Kind = "image" if "image" in app.lower() and "video" not in app.lower() else "video"

        def build(behaviour: Behaviour) -> FakeJob:
            job_id = str(uuid.uuid4())
            files = self.files(job_id, behaviour, kind=kind, lists=True)
            meta = {"app": app, "webhook": request.query.get("fal_webhook")}
            return FakeJob(job_id, self.name, behaviour, body, files, meta=meta)

        async def answer(job: FakeJob) -> Reply:
            payload = {"status": "IN_QUEUE", "request_id": job.id, **self.links(job)}
            payload["queue_position"] = self.queue_position(0.0)
            return Reply.json(200, payload, (("x-fal-request-id", job.id),))

        return await self.submit(build, answer)

    def request_job(self, app: str, request_id: str, missing: Reply | None = None) -> FakeJob:
        """The request's job, or (raised) `missing`: by default the 404 "Request not found"."""
        job = self.state.get_job(self.name, request_id)
        if job is None or job.meta["app"] != app:
            raise Refused(missing or self.error(404, "Request not found"))
        return job

    @staticmethod
    def failure(job: FakeJob) -> tuple[str, str]:
        if job.outcome == "cancelled":
            return "Request was cancelled", "request_cancelled"
        return job.behaviour.failure_reason or "Runner disconnected", "runner_disconnected"

    async def status(self, request: Request, app: str, request_id: str) -> Reply:
        job = self.request_job(app, request_id)
        with_logs = request.query.get("logs") in ("1", "true")
        logs = [
            {
                "message": "Generating...",
                "level": "INFO",
                "source": "USER",
                "timestamp": _iso(job.created_wall),
            }
        ]

        def answer(progress: float | None) -> Reply:
            base = {"request_id": job.id, **self.links(job)}
            shown = logs if with_logs else None
            if progress is not None and progress < 0.5:
                position = self.queue_position(progress)
                return Reply.json(202, {"status": "IN_QUEUE", "queue_position": position, **base})
            if progress is not None:
                return Reply.json(202, {"status": "IN_PROGRESS", "logs": shown, **base})
            done = {"status": "COMPLETED", "logs": shown, **base}
            if job.outcome == "success":
                elapsed = round((job.finished_wall or time.time()) - job.created_wall, 3)
                return Reply.json(200, {**done, "metrics": {"inference_time": elapsed}})
            error, error_type = self.failure(job)
            return Reply.json(
                200, {**done, "metrics": {}, "error": error, "error_type": error_type}
            )

        return await self.poll(job, answer)

    def output(self, job: FakeJob) -> dict[str, Any]:
        kind = job.files[0].mimetype.split("/")[0]
        if kind == "image":
            images = [
                {"url": self.url(job, f), "width": 1024, "height": 1024, "content_type": f.mimetype}
                for f in job.files
            ]
            return {"images": images, "seed": 1}
        file = job.files[0]
        described = {"url": self.url(job, file), "content_type": file.mimetype}
        return {kind: described | {"file_name": file.name, "file_size": file.size}, "seed": 1}

    async def result(self, request: Request, app: str, request_id: str) -> Reply:
        job = self.request_job(app, request_id)
        request_header = ("x-fal-request-id", job.id)

        def answer() -> Reply:
            if self.state.progress(job) is not None:
                return self.error(400, "Request is still in progress")
            if job.outcome != "success":
                error, error_type = self.failure(job)
                headers = (("x-fal-error-type", error_type), request_header)
                return Reply.json(500, {"detail": error, "error_type": error_type}, headers)
            return Reply.json(200, self.output(job), (request_header,))

        return await self.fetch(job, "result", answer)

    async def cancel(self, request: Request, app: str, request_id: str) -> Reply:
        job = self.request_job(app, request_id, Reply.json(404, {"status": "NOT_FOUND"}))
        if self.state.cancel(job) or job.cancelled:
            return Reply.json(202, {"status": "CANCELLATION_REQUESTED"})
        return Reply.json(400, {"status": "ALREADY_COMPLETED"})

    def callback_url(self, job: FakeJob) -> str | None:
        return job.meta["webhook"]

    def callback_body(self, job: FakeJob, event: Event) -> dict[str, Any]:
        """OK with the result JSON as `payload`, or ERROR with the failure's text."""
        ids = {"request_id": job.id, "gateway_request_id": job.id}
        if job.outcome == "success":
            return ids | {"status": "OK", "payload": self.output(job), "error": None}
        return ids | {"status": "ERROR", "payload": None, "error": self.failure(job)[0]}

    def forged_body(self, job: FakeJob) -> dict[str, Any]:
        payload = {"video": {"url": self.forged_link(job), "content_type": "video/mp4"}}
        ids = {"request_id": job.id, "gateway_request_id": job.id}
        return ids | {"status": "OK", "payload": payload, "error": None}


class Runway(Api):
    """Runway tasks: camelCase, PENDING → THROTTLED → RUNNING, output is a list of JWT links."""

    name = key_name = "runway"
    VERSION = "2024-11-06"

    def routes(self) -> list[Route]:
        task = r"/v1/tasks/(?P<task_id>[^/]+)"
        kinds = r"image_to_video|text_to_video|video_to_video|text_to_image"
        return [
            self.route("POST", rf"/v1/(?P<endpoint>{kinds})", self.create, submit=True),
            self.route("GET", task, self.task),
            self.route("DELETE", task, self.delete),
        ]

    def check(self, request: Request) -> Reply | None:
        if not self.authorized(request):
            return self.error(401, "Invalid API key")
        if request.headers.get("x-runway-version") != self.VERSION:
            message = f"The X-Runway-Version header must be set to {self.VERSION}"
            return self.error(400, message)
        return None

    def error(self, status: int, message: str) -> Reply:
        return Reply.json(status, {"error": message})

    async def create(self, request: Request, endpoint: str) -> Reply:
        body = request.json()
        required = ("model", "promptImage") if endpoint == "image_to_video" else ("model",)
        missing = [key for key in required if not isinstance(body, dict) or key not in body]
        if missing:
            return self.error(400, f"Validation of body failed: {', '.join(missing)} is required")
        kind: Kind = "image" if endpoint == "text_to_image" else "video"

        def build(behaviour: Behaviour) -> FakeJob:
            job_id = str(uuid.uuid4())
            files = self.files(job_id, behaviour, kind=kind, lists=True, signing="jwt")
            return FakeJob(job_id, self.name, behaviour, body, files)

        async def answer(job: FakeJob) -> Reply:
            return Reply.json(200, {"id": job.id})

        return await self.submit(build, answer)

    def payload(self, job: FakeJob, progress: float | None) -> dict[str, Any]:
        task: dict[str, Any] = {"id": job.id, "createdAt": _iso(job.created_wall)}
        if progress is not None:
            if progress < 0.1:
                return task | {"status": "PENDING"}
            if progress < 0.5:
                return task | {"status": "THROTTLED"}
            return task | {"status": "RUNNING", "progress": round(progress, 2)}
        if job.outcome == "success":
            return task | {"status": "SUCCEEDED", "output": [self.url(job, f) for f in job.files]}
        if job.outcome == "failure":
            failure = job.behaviour.failure_reason or "An unexpected error occurred."
            return task | {
                "status": "FAILED",
                "failure": failure,
                "failureCode": "INTERNAL.BAD_OUTPUT.CODE01",
            }
        return task | {"status": "CANCELLED"}

    async def task(self, request: Request, task_id: str) -> Reply:
        job = self.job(task_id, "Task not found")
        return await self.poll(job, lambda p: Reply.json(200, self.payload(job, p)))

    async def delete(self, request: Request, task_id: str) -> Reply:
        job = self.job(task_id, "Task not found")
        self.state.cancel(job, delete=True)
        return Reply(204)


class Replicate(Api):
    """Replicate predictions: 201 on create, `Prefer: wait`, output a list or one URL."""

    name = key_name = "replicate"
    TITLES: ClassVar[dict[int, str]] = {
        401: "Unauthenticated",
        404: "Not found",
        422: "Input validation failed",
        429: "Request was throttled",
    }
    _PREFER = re.compile(r"\s*wait(?:\s*=\s*(\d+))?\s*")

    def routes(self) -> list[Route]:
        prediction = r"/v1/predictions/(?P<prediction_id>[^/]+)"
        scoped = r"/v1/(?:models|deployments)/(?P<owner>[^/]+)/(?P<model>[^/]+)/predictions"
        return [
            self.route("POST", r"/v1/predictions", self.create, submit=True),
            self.route("POST", scoped, self.create, submit=True),
            self.route("GET", prediction, self.get),
            self.route("POST", prediction + "/cancel", self.cancel),
        ]

    def authorized(self, request: Request) -> bool:
        return request.headers.get("authorization") in (f"Bearer {self.key}", f"Token {self.key}")

    def check(self, request: Request) -> Reply | None:
        if self.authorized(request):
            return None
        return self.error(401, "You did not pass a valid authentication token")

    def error(self, status: int, message: str) -> Reply:
        title = self.TITLES.get(status, message)
        return Reply.json(status, {"title": title, "detail": message, "status": status})

    async def create(self, request: Request, owner: str = "", model: str = "") -> Reply:
        body = request.json()
        if not isinstance(body, dict) or not isinstance(body.get("input"), dict):
            return self.error(422, "- input: input is required and must be an object")
        version = body.get("version")
        if not owner and not isinstance(version, str):
            return self.error(422, "- version: version is required")
        name = f"{owner}/{model}" if owner else "replicate/fake-model"
        if isinstance(version, str) and ":" in version:
            name, version = version.split(":", 1)
        version = version or hashlib.sha256(name.encode()).hexdigest()
        prefer = self._PREFER.fullmatch(request.headers.get("prefer", ""))

        def build(behaviour: Behaviour) -> FakeJob:
            job_id = b32encode(secrets.token_bytes(20)).decode().lower()[:26]
            files = self.files(job_id, behaviour, lists=True)
            meta = {"model": name, "version": version}
            return FakeJob(job_id, self.name, behaviour, body, files, meta=meta)

        async def answer(job: FakeJob) -> Reply:
            if prefer is None:
                return Reply.json(201, self.prediction(job, 0.0))
            wait = min(max(int(prefer.group(1) or 60), 1), 60)
            seconds = job.behaviour.seconds_until_done
            if seconds is not None:
                await asyncio.sleep(min(wait, max(seconds - (time.monotonic() - job.created), 0)))
            progress = self.state.progress(job)
            data_uri = (
                progress is None and job.outcome == "success" and job.behaviour.data_uri_output
            )
            applied = f"wait={prefer.group(1)}" if prefer.group(1) else "wait"
            headers = (("preference-applied", applied),)
            return Reply.json(201, self.prediction(job, progress, data_uri=data_uri), headers)

        return await self.submit(build, answer)

    def output(self, job: FakeJob, items: list[str]) -> str | list[str]:
        return items[0] if job.behaviour.single_output else items

    def prediction(
        self, job: FakeJob, progress: float | None, *, data_uri: bool = False
    ) -> dict[str, Any]:
        get = f"{self.state.api_url}/v1/predictions/{job.id}"
        prediction: dict[str, Any] = {
            "id": job.id,
            "model": job.meta["model"],
            "version": job.meta["version"],
            "input": job.input["input"],
            "logs": "",
            "error": None,
            "status": "starting",
            "created_at": _iso(job.created_wall, 6),
            "data_removed": False,
            "source": "api",
            "urls": {"cancel": f"{get}/cancel", "get": get},
        }
        if progress is not None and progress < 0.5 and not data_uri:
            return prediction
        prediction |= {"started_at": _iso(job.created_wall, 6), "output": None}
        prediction["logs"] = "Using seed: 1\n 50%|█████     | 25/50"
        if data_uri:
            uris = [file.data_uri() for file in job.files]
            return prediction | {"status": "processing", "output": self.output(job, uris)}
        if progress is not None:
            return prediction | {"status": "processing"}
        finished = job.finished_wall or time.time()
        prediction["completed_at"] = _iso(finished, 6)
        prediction["metrics"] = {"predict_time": round(finished - job.created_wall, 6)}
        if job.outcome == "success":
            urls = [self.url(job, file) for file in job.files]
            prediction["logs"] = "Using seed: 1\n100%|██████████| 50/50"
            return prediction | {"status": "succeeded", "output": self.output(job, urls)}
        if job.outcome == "failure":
            return prediction | {"status": "failed", "error": job.behaviour.failure_reason or "OOM"}
        return prediction | {"status": "canceled"}

    async def get(self, request: Request, prediction_id: str) -> Reply:
        job = self.job(prediction_id, "The requested resource could not be found")
        return await self.poll(job, lambda p: Reply.json(200, self.prediction(job, p)))

    async def cancel(self, request: Request, prediction_id: str) -> Reply:
        job = self.job(prediction_id, "The requested resource could not be found")
        self.state.cancel(job)
        return Reply.json(200, self.prediction(job, self.state.progress(job)))

    def callback_url(self, job: FakeJob) -> str | None:
        url = job.input.get("webhook")
        return url if isinstance(url, str) else None

    def callback_events(self, job: FakeJob) -> tuple[Event, ...]:
        """`webhook_events_filter`'s start and completed (the fake sends no output or logs
        events); without a filter, completed only."""
        chosen = job.input.get("webhook_events_filter")
        if not isinstance(chosen, list):
            return ("completed",)
        return tuple(event for event in ("start", "completed") if event in chosen)

    def callback_body(self, job: FakeJob, event: Event) -> dict[str, Any]:
        """The prediction exactly as its GET answers now."""
        return self.prediction(job, self.state.progress(job))

    def forged_body(self, job: FakeJob) -> dict[str, Any]:
        output = self.output(job, [self.forged_link(job)])
        return self.callback_body(job, "completed") | {"status": "succeeded", "output": output}

    def sign(self, body: bytes, key: bytes) -> Headers:
        return standard_webhooks(body, key)


class Operation(Api):
    """Google long-running operation: `name`, then `done` with `response` or `error`."""

    name = "operation"
    STATUSES: ClassVar[dict[int, str]] = {
        400: "INVALID_ARGUMENT",
        401: "UNAUTHENTICATED",
        403: "PERMISSION_DENIED",
        404: "NOT_FOUND",
        429: "RESOURCE_EXHAUSTED",
        500: "INTERNAL",
        503: "UNAVAILABLE",
        504: "DEADLINE_EXCEEDED",
    }

    def routes(self) -> list[Route]:
        operation = r"/v1beta/operations/(?P<operation_id>[^/:]+)"
        return [
            self.route(
                "POST", r"/v1beta/models/(?P<model>[^/:]+):predictLongRunning", self.start, True
            ),
            self.route("GET", operation, self.get),
            self.route("POST", operation + ":cancel", self.cancel),
            self.route("GET", r"/v1beta/files/(?P<file_id>[^/:]+):download", self.download),
        ]

    def authorized(self, request: Request) -> bool:
        """Gemini takes its key as ``x-goog-api-key`` (or a bearer token)."""
        return request.headers.get("x-goog-api-key") == self.key or super().authorized(request)

    def error(self, status: int, message: str) -> Reply:
        code = self.STATUSES.get(status, "UNKNOWN")
        return Reply.json(status, {"error": {"code": status, "message": message, "status": code}})

    async def start(self, request: Request, model: str) -> Reply:
        body = request.json()
        if not isinstance(body, dict):
            return self.error(400, "Invalid JSON payload received.")

        def build(behaviour: Behaviour) -> FakeJob:
            job_id = secrets.token_hex(8)
            files = self.files(job_id, behaviour, lists=True)
            return FakeJob(job_id, self.name, behaviour, body, files)

        async def answer(job: FakeJob) -> Reply:
            return Reply.json(200, {"name": f"operations/{job.id}"})

        return await self.submit(build, answer)

    def payload(self, job: FakeJob, progress: float | None) -> dict[str, Any]:
        operation: dict[str, Any] = {"name": f"operations/{job.id}", "done": progress is None}
        if progress is not None:
            return operation
        if job.outcome == "success":
            samples = [{"video": {"uri": self.file_link(job, n)}} for n in range(len(job.files))]
            return operation | {"response": {"generatedSamples": samples}}
        if job.outcome == "failure":
            message = job.behaviour.failure_reason or "The request violates the usage guidelines."
            return operation | {"error": {"code": 3, "message": message}}
        return operation | {"error": {"code": 1, "message": "The operation was cancelled."}}

    def file_link(self, job: FakeJob, index: int) -> str:
        """Where output ``index`` is served: the CDN, or this origin (``files_on_api``)."""
        if job.behaviour.files_on_api:
            return f"{self.state.api_url}/v1beta/files/{job.id}-{index}:download?alt=media"
        return self.url(job, job.files[index])

    async def download(self, request: Request, file_id: str) -> Reply:
        job_id, _, index = file_id.rpartition("-")
        missing = f"File files/{file_id} not found."
        job = self.job(job_id, missing)
        if not job.behaviour.files_on_api or not index.isdigit() or int(index) >= len(job.files):
            return self.error(404, missing)
        file = job.files[int(index)]
        return await self.fetch(job, "download", lambda: self.serve(job, file, request))

    async def get(self, request: Request, operation_id: str) -> Reply:
        job = self.job(operation_id, f"Operation operations/{operation_id} not found.")
        return await self.poll(job, lambda p: Reply.json(200, self.payload(job, p)))

    async def cancel(self, request: Request, operation_id: str) -> Reply:
        job = self.job(operation_id, f"Operation operations/{operation_id} not found.")
        self.state.cancel(job)
        return Reply.json(200, {})


class OpenAI(Api, providers.OpenAI):
    """The shipped OpenAI videos, with failures and a delete, and the synchronous speech."""

    def routes(self) -> list[Route]:
        return [
            *super().routes(),
            self.route("DELETE", self.VIDEO, self.delete),
            self.route("POST", r"/v1/audio/speech", self.speech, submit=True),
        ]

    def finished(self, job: FakeJob, at: int) -> dict[str, Any]:
        if job.outcome == "success":
            return super().finished(job, at)
        if job.outcome == "failure":
            message = job.behaviour.failure_reason or "Video generation failed."
            error = {"code": "video_generation_failed", "message": message}
        else:
            error = {"code": "cancelled", "message": "Video generation was cancelled."}
        return {"status": "failed", "error": error}

    async def delete(self, request: Request, video_id: str) -> Reply:
        job = self.job(video_id, f"Video with id '{video_id}' not found.")
        self.state.cancel(job, delete=True)
        return Reply.json(200, {"id": job.id, "object": "video.deleted", "deleted": True})

    async def speech(self, request: Request) -> Reply:
        body = request.json()
        if not isinstance(body, dict) or not body.get("input"):
            return self.error(400, "Missing required parameter: 'input'.")

        def build(behaviour: Behaviour) -> FakeJob:
            job_id = f"req_{secrets.token_hex(16)}"
            done = replace(behaviour, polls_until_done=0, seconds_until_done=None)
            files = self.files(job_id, done, kind="audio", stem="speech")
            return FakeJob(job_id, self.name, done, body, files)

        async def answer(job: FakeJob) -> Reply:
            if job.outcome != "success":
                reason = job.behaviour.failure_reason or "The server had an error."
                return self.error(500, reason)
            reply = serve_file(job.files[0], request, ranges=False)
            return reply.but(headers=(*reply.headers, ("x-request-id", job.id)))

        return await self.submit(build, answer)


class Jobs(Api):
    """A terse job API: 202 with an empty body while running, 200 with the result after.

    Like Stripe-style APIs it honours ``Idempotency-Key``: a submit repeating a key
    answers the job that key created, and creates nothing. It takes JSON, form and
    multipart bodies; the job's ``input`` is what it parsed (a file part becomes its
    filename, content type, size and sha256).
    """

    name = "jobs"

    def routes(self) -> list[Route]:
        job = r"/v2/jobs/(?P<job_id>[^/]+)"
        return [
            self.route("POST", r"/v2/jobs", self.create, submit=True),
            self.route("GET", job, self.get),
            self.route("DELETE", job, self.delete),
        ]

    def error(self, status: int, message: str) -> Reply:
        return Reply.json(status, {"error": message})

    async def create(self, request: Request) -> Reply:
        body = submitted_body(request)
        key = request.headers.get("idempotency-key")
        repeated = self.state.job_for_key(key) if key else None
        if repeated is not None:
            return Reply.json(202, {"job": {"id": repeated}})

        def build(behaviour: Behaviour) -> FakeJob:
            job_id = f"job_{secrets.token_hex(8)}"
            files = self.files(job_id, behaviour, stem="download", extension=False)
            return FakeJob(job_id, self.name, behaviour, body, files)

        async def answer(job: FakeJob) -> Reply:
            if key:
                self.state.remember_key(key, job.id)
            return Reply.json(202, {"job": {"id": job.id}})

        return await self.submit(build, answer)

    def answer(self, job: FakeJob, progress: float | None) -> Reply:
        return Reply(202) if progress is not None else Reply.json(200, self.finished(job))

    def finished(self, job: FakeJob) -> dict[str, Any]:
        """The status of a job that has ended."""
        if job.outcome == "success":
            return {"result": {"download_url": self.url(job, job.files[0])}}
        if job.outcome == "failure":
            message = job.behaviour.failure_reason or "Job failed"
            return {"status": "failed", "error": {"message": message}}
        return {"status": "cancelled"}

    async def get(self, request: Request, job_id: str) -> Reply:
        job = self.job(job_id, "No such job")
        return await self.poll(job, lambda p: self.answer(job, p))

    async def delete(self, request: Request, job_id: str) -> Reply:
        job = self.job(job_id, "No such job")
        self.state.cancel(job)
        return Reply(204)

    def callback_url(self, job: FakeJob) -> str | None:
        url = job.input.get("callback") if isinstance(job.input, dict) else None
        return url if isinstance(url, str) else None

    def callback_body(self, job: FakeJob, event: Event) -> dict[str, Any]:
        """What its status check answers once the job has ended."""
        return self.finished(job)

    def forged_body(self, job: FakeJob) -> dict[str, Any]:
        return {"result": {"download_url": self.forged_link(job)}}

    def sign(self, body: bytes, key: bytes) -> Headers:
        """``X-Signature: sha256=<hex HMAC-SHA256 of the raw body>``."""
        return (("X-Signature", "sha256=" + hmac_hex(body, key)),)


def submitted_body(request: Request) -> Any:
    """A submit's body as the server understood it: JSON, a form, or multipart parts."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("application/x-www-form-urlencoded"):
        return dict(parse_qsl(request.body.decode(), keep_blank_values=True))
    if not content_type.startswith("multipart/form-data"):
        return request.json()
    head = f"Content-Type: {content_type}\r\n\r\n".encode()
    message = BytesParser(policy=HTTP).parsebytes(head + request.body)
    parts: dict[str, Any] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        data = part.get_payload(decode=True) or b""
        if part.get_filename() is None:
            parts[name] = data.decode()
        else:
            parts[name] = {
                "filename": part.get_filename(),
                "contentType": part.get_content_type(),
                "size": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
            }
    return parts


class Probe(Api):
    """Test instruments on the API origin, no credentials needed (not a provider).

    - ``/_probe/redirect?to=URL&status=302``: a redirect (any method) to ``to``.
    - ``/_probe/headers``: echoes the request's method, headers and query as JSON.
    - ``/_probe/stream?bytes=N&type=T&chunked=1``: a valid JSON document of N bytes
      (``{"padding": "xxx…"}``), streamed; ``chunked=1`` leaves out Content-Length.
    """

    name = "probe"
    METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH")
    STREAM_PIECE = 1 << 20

    def routes(self) -> list[Route]:
        return [
            *(self.route(method, r"/_probe/redirect", self.redirect) for method in self.METHODS),
            *(self.route(method, r"/_probe/headers", self.headers) for method in self.METHODS),
            self.route("GET", r"/_probe/stream", self.stream),
        ]

    def check(self, request: Request) -> Reply | None:
        return None

    def error(self, status: int, message: str) -> Reply:
        return Reply.json(status, {"error": message})

    async def redirect(self, request: Request) -> Reply:
        target = request.query.get("to")
        if not target:
            return self.error(400, "to is required")
        status = int(request.query.get("status", "302"))
        return Reply(status, (("location", target),))

    async def headers(self, request: Request) -> Reply:
        echo = {"method": request.method, "headers": request.headers, "query": request.query}
        return Reply.json(200, echo)

    async def stream(self, request: Request) -> Reply:
        size = int(request.query.get("bytes", "0"))
        opening, closing = b'{"padding": "', b'"}'
        if size < len(opening) + len(closing):
            return self.error(400, f"bytes must be at least {len(opening) + len(closing)}")

        def pieces() -> Iterator[bytes]:
            yield opening
            left = size - len(opening) - len(closing)
            filler = b"x" * min(self.STREAM_PIECE, left)
            while left > 0:
                piece = filler[:left]
                left -= len(piece)
                yield piece
            yield closing

        content_type = request.query.get("type", "application/json")
        chunked = request.query.get("chunked") in ("1", "true")
        return Reply(200, (("content-type", content_type),), pieces(), None if chunked else size)


# FAL last: its submit route (`/{owner}/{app}/...`) would swallow the others' paths.
# Probe first: its paths are not any provider's.
APIS: tuple[type[Api], ...] = (
    Probe,
    HeyGen,
    Replicate,
    Runway,
    OpenAI,
    Jobs,
    Operation,
    Fal,
)
