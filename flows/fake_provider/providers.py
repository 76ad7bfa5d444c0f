"""The provider APIs served on the API origin, shaped like the real ones.

HeyGen's avatar video (the preset ``toolflows demo`` runs) and an OpenAI-style videos
API (README: "Adding a provider that is not a preset"), each as the happy path: every
job succeeds after a few status checks.
"""

from __future__ import annotations

import re
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from toolflows.fake_provider.cdn import serve_file
from toolflows.fake_provider.content import FakeFile
from toolflows.fake_provider.http import Reply, Request, phrase
from toolflows.fake_provider.model import Behaviour, FakeJob
from toolflows.fake_provider.state import State

Handler = Callable[..., Awaitable[Reply]]


@dataclass(frozen=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    api: Api
    handler: Handler
    # The route creates a job: a submit, whatever its answer.
    submit: bool = False


class Refused(Exception):
    """Ends a request early with `reply` (an unknown job's 404, in its provider's shape)."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.status)
        self.reply = reply


class Api:
    """One provider: its routes, its credentials check and its error shape.

    `submit`, `poll` and `fetch` are where a request meets a job; they do the plain thing
    here, so that a subclass can put something in the way.
    """

    name: ClassVar[str]
    key_name: ClassVar[str] = "generic"
    job_type: ClassVar[type[FakeJob]] = FakeJob

    def __init__(self, state: State) -> None:
        self.state = state

    @property
    def key(self) -> str:
        return self.state.api_keys[self.key_name]

    def routes(self) -> list[Route]:
        raise NotImplementedError

    def route(self, method: str, pattern: str, handler: Handler, submit: bool = False) -> Route:
        return Route(method, re.compile(pattern), self, handler, submit)

    def error(self, status: int, message: str) -> Reply:
        raise NotImplementedError

    def authorized(self, request: Request) -> bool:
        return request.headers.get("authorization") == f"Bearer {self.key}"

    def check(self, request: Request) -> Reply | None:
        """The refusal of a request that may not reach any job (credentials, version)."""
        return None if self.authorized(request) else self.error(401, phrase(401))

    def files(self, job_id: str, behaviour: Behaviour, *, stem: str = "output") -> list[FakeFile]:
        """The job's main output: one video of the behaviour's size."""
        name = f"{stem}.mp4"
        return [FakeFile(name, behaviour.file_size, "video/mp4", f"{job_id}/{name}")]

    def new_job(
        self, job_id: str, behaviour: Behaviour, input: Any, files: list[FakeFile]
    ) -> FakeJob:
        return self.job_type(job_id, self.name, behaviour, input, files)

    def url(self, job: FakeJob, file: FakeFile) -> str:
        return self.state.file_url(job, file)

    def job(self, job_id: str, missing: str) -> FakeJob:
        """The job, or (raised) this provider's 404 saying `missing`."""
        job = self.state.get_job(self.name, job_id)
        if job is None:
            raise Refused(self.error(404, missing))
        return job

    def succeeded(self, job: FakeJob) -> bool:
        """The job is done and its output can be fetched."""
        return self.state.progress(job) is None

    def serve(self, job: FakeJob, file: FakeFile, request: Request) -> Reply:
        """An output file served on the API origin itself."""
        return serve_file(file, request)

    async def submit(
        self, build: Callable[[Behaviour], FakeJob], answer: Callable[[FakeJob], Awaitable[Reply]]
    ) -> Reply:
        """Create a job and answer its submit."""
        return await answer(self.state.add_job(build(Behaviour())))

    async def poll(self, job: FakeJob, answer: Callable[[float | None], Reply]) -> Reply:
        """A status check: counted, it advances the job."""
        return answer(self.state.poll(job))

    async def fetch(
        self, job: FakeJob, which: Literal["result", "download"], answer: Callable[[], Reply]
    ) -> Reply:
        """A request for a job's result (JSON) or a download of its bytes."""
        return answer()


class HeyGen(Api):
    """v2 generate + v1 status: an envelope, a video_url, thumbnail and gif beside it."""

    name = key_name = "heygen"
    DATA_KEYS = (
        "callback_id",
        "caption_url",
        "duration",
        "error",
        "gif_url",
        "id",
        "status",
        "thumbnail_url",
        "video_url",
        "video_url_caption",
    )

    def routes(self) -> list[Route]:
        return [
            self.route("POST", r"/v2/video/generate", self.generate, submit=True),
            self.route("GET", r"/v1/video_status\.get", self.status),
        ]

    def authorized(self, request: Request) -> bool:
        return request.headers.get("x-api-key") == self.key

    def error(self, status: int, message: str) -> Reply:
        return Reply.json(status, {"code": 400112 if status == 401 else status, "message": message})

    def outputs(self, job_id: str, behaviour: Behaviour) -> list[FakeFile]:
        """The video, then the thumbnail and the gif HeyGen links beside it."""
        return [
            *self.files(job_id, behaviour, stem="video"),
            FakeFile("thumb.jpeg", 2048, "image/jpeg", f"{job_id}/thumb"),
            FakeFile("gif.gif", 2048, "image/gif", f"{job_id}/gif"),
        ]

    async def generate(self, request: Request) -> Reply:
        body = request.json()
        if not isinstance(body, dict) or not body.get("video_inputs"):
            return self.error(400, "video_inputs is required")

        def build(behaviour: Behaviour) -> FakeJob:
            job_id = uuid.uuid4().hex
            return self.new_job(job_id, behaviour, body, self.outputs(job_id, behaviour))

        async def answer(job: FakeJob) -> Reply:
            return Reply.json(200, {"error": None, "data": {"video_id": job.id}})

        return await self.submit(build, answer)

    def data(self, job: FakeJob, progress: float | None) -> dict[str, Any]:
        data: dict[str, Any] = dict.fromkeys(self.DATA_KEYS)
        data |= {"id": job.id, "callback_id": job.input.get("callback_id")}
        data["created_at"] = int(job.created_wall)
        if progress is not None:
            return data | {"status": "pending" if progress < 0.5 else "processing"}
        return data | self.finished(job)

    def finished(self, job: FakeJob) -> dict[str, Any]:
        """The fields a finished video adds to its status."""
        video, thumbnail, gif = job.files
        links = {"video_url": video, "thumbnail_url": thumbnail, "gif_url": gif}
        return {"status": "completed", "duration": 4.2} | {
            field: self.url(job, file) for field, file in links.items()
        }

    async def status(self, request: Request) -> Reply:
        video_id = request.query.get("video_id")
        if not video_id:
            return self.error(400, "video_id is required")
        job = self.job(video_id, "Video not found")

        def answer(progress: float | None) -> Reply:
            envelope = {"code": 100, "data": self.data(job, progress), "message": "Success"}
            return Reply.json(200, envelope)

        return await self.poll(job, answer)


class OpenAI(Api):
    """OpenAI videos: queued, in_progress with a 0-100 progress, completed; bytes at /content."""

    name = "openai"
    VIDEO = r"/v1/videos/(?P<video_id>[^/]+)"

    def routes(self) -> list[Route]:
        return [
            self.route("POST", r"/v1/videos", self.create, submit=True),
            self.route("GET", self.VIDEO, self.get),
            self.route("GET", self.VIDEO + "/content", self.content),
        ]

    def check(self, request: Request) -> Reply | None:
        return None if self.authorized(request) else self.error(401, "Incorrect API key provided.")

    def error(self, status: int, message: str) -> Reply:
        kind = "server_error" if status >= 500 else "invalid_request_error"
        code = {401: "invalid_api_key", 429: "rate_limit_exceeded"}.get(status)
        body = {"message": message, "type": kind, "param": None, "code": code}
        return Reply.json(status, {"error": body})

    async def create(self, request: Request) -> Reply:
        body = request.json()
        body = body if isinstance(body, dict) else {}

        def build(behaviour: Behaviour) -> FakeJob:
            job_id = f"video_{secrets.token_hex(16)}"
            return self.new_job(job_id, behaviour, body, self.files(job_id, behaviour))

        async def answer(job: FakeJob) -> Reply:
            return Reply.json(200, self.video(job, 0.0) | {"status": "queued"})

        return await self.submit(build, answer)

    def video(self, job: FakeJob, progress: float | None) -> dict[str, Any]:
        video: dict[str, Any] = {
            "id": job.id,
            "object": "video",
            "model": job.input.get("model", "sora-2"),
            "status": "in_progress",
            "progress": 0,
            "created_at": int(job.created_wall),
            "completed_at": None,
            "expires_at": None,
            "size": job.input.get("size", "720x1280"),
            "seconds": str(job.input.get("seconds", "4")),
            "error": None,
        }
        if progress is not None:
            return video | {"progress": int(progress * 100)}
        finished = int(job.finished_wall or time.time())
        return video | {"progress": 100, "completed_at": finished} | self.finished(job, finished)

    def finished(self, job: FakeJob, at: int) -> dict[str, Any]:
        """The fields a video finished at `at` changes."""
        return {"status": "completed", "expires_at": at + 86400}

    async def get(self, request: Request, video_id: str) -> Reply:
        job = self.job(video_id, f"Video with id '{video_id}' not found.")
        return await self.poll(job, lambda p: Reply.json(200, self.video(job, p)))

    async def content(self, request: Request, video_id: str) -> Reply:
        job = self.job(video_id, f"Video with id '{video_id}' not found.")
        if not self.succeeded(job):
            return self.error(
                400, "Video is not ready yet, use GET /v1/videos/{id} to check status."
            )
        return await self.fetch(job, "download", lambda: self.serve(job, job.files[0], request))
