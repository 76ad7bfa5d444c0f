"""The jobs, shared by both origins behind one lock.

The servers run on their own event loop thread while their owner reads from its own,
so every access goes through one lock (held only for dictionary-sized work).
"""

from __future__ import annotations

import threading

from toolflows.fake_provider.content import FakeFile
from toolflows.fake_provider.model import FakeJob


class State:
    def __init__(self, api_keys: dict[str, str]) -> None:
        self.lock = threading.Lock()
        self.api_keys = api_keys
        self.api_url = ""
        self.cdn_url = ""
        self.jobs: dict[str, FakeJob] = {}

    def add_job(self, job: FakeJob) -> FakeJob:
        with self.lock:
            self.jobs[job.id] = job
        return job

    def get_job(self, provider: str, job_id: str) -> FakeJob | None:
        with self.lock:
            job = self.jobs.get(job_id)
        return job if job is not None and job.provider == provider else None

    def poll(self, job: FakeJob) -> float | None:
        """Count an answered status check; the job's progress as that check sees it."""
        with self.lock:
            job.polls += 1
            return job.progress()

    def progress(self, job: FakeJob) -> float | None:
        with self.lock:
            return job.progress()

    @staticmethod
    def file_path(job: FakeJob, file: FakeFile) -> str:
        return f"/{job.provider}/{job.id}/{file.name}"

    def file_url(self, job: FakeJob, file: FakeFile) -> str:
        """Absolute CDN URL of a file."""
        return self.cdn_url + self.file_path(job, file)
