"""Benchmark 3: downloading one big output into result storage.

The Replicate preset (unsigned CDN links, so ``curl`` can fetch the very same
URL) with a job that is done at its first status check and one output of
``download_bytes``, stored once into local storage (``LocalFileSystem``, the
embedded default) and once into S3 (a prefect-aws ``S3Bucket`` block on
moto's S3 server, multipart upload).

Throughput counts the transfer only: from the moment the fake's CDN received
the GET to the moment the engine logged ``Downloaded N bytes`` (after the
file was published: fsync + rename locally, multipart completed on S3). The
flow run's set-up, submit and poll are not a download's cost (benchmark 5
prices them). Peak RSS growth is sampled every 5 ms in the worker during the
run, against its RSS just before (after a small warm-up run).

Baseline: ``curl -o`` of the same URL into a file in the same directory tree,
right after, the median of ``curl_repeats`` runs. For S3 the bare pipeline
(httpx stream, 8 MiB parts sent with boto3 one after the other) is measured
too, for context: it tells moto's share of the time from toolflows'.
"""

from __future__ import annotations

import os
import resource
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.common import MIB, REPLICATE, REPLICATE_PARAMS, Context, Row, median
from bench.procstat import RssSampler

TARGET_SHARE = 0.8
RSS_LIMIT = 64 * MIB
BUCKET = "bench-media"
BLOCK_NAME = "bench-media"
PART_BYTES = 8 * MIB


def run(ctx: Context) -> list[Row]:
    assert ctx.moto is not None, "the download benchmark needs moto_server"
    size = ctx.sizes.download_bytes
    tf = ctx.run_worker(
        "download:measure",
        size=size,
        s3_endpoint=ctx.moto.endpoint,
        context_runs=ctx.sizes.context_runs,
    )
    curl = _curl(tf["url"], ctx.workdir / "curl-output", ctx.sizes.curl_repeats)
    label = f"{size / MIB:.0f} MiB" if size < 1024 * MIB else f"{size / (1024 * MIB):g} GiB"
    rows: list[Row] = []
    for storage in ("local", "s3"):
        run_ = tf[storage]
        rows.append(
            Row(
                f"3. download {label} -> {storage}: throughput (vs curl -o)",
                run_["throughput"] / MIB,
                curl["throughput"] / MIB,
                "MiB/s",
                f">= {TARGET_SHARE:g}x curl",
                run_["throughput"] >= TARGET_SHARE * curl["throughput"],
                details={"toolflows": run_, "curl": curl},
            )
        )
        rows.append(
            Row(
                f"3. download {label} -> {storage}: peak RSS growth (curl: max RSS)",
                run_["rss_growth"] / MIB,
                curl["max_rss"] / MIB,
                "MiB",
                f"<= {RSS_LIMIT / MIB:.0f} MiB",
                run_["rss_growth"] <= RSS_LIMIT,
            )
        )
    if not ctx.sizes.context_runs:
        return rows
    rows.append(
        Row(
            f"3. {label} -> s3: moto's own intake (in-memory parts, no download)",
            tf["s3"]["throughput"] / MIB,
            tf["moto_alone"]["throughput"] / MIB,
            "MiB/s",
            "(context)",
            None,
            details={"moto_alone": tf["moto_alone"]},
        )
    )
    rows.append(
        Row(
            f"3. download {label} -> s3 vs bare httpx + boto3 parts",
            tf["s3"]["throughput"] / MIB,
            tf["bare_s3"]["throughput"] / MIB,
            "MiB/s",
            "(context)",
            None,
            details={"bare_s3": tf["bare_s3"]},
        )
    )
    return rows


def _curl(url: str, target: Path, repeats: int) -> dict[str, Any]:
    """``curl -o`` the URL ``repeats`` times; median wall, bytes and curl's max RSS."""
    walls, sizes, rss = [], [], []
    for _ in range(repeats):
        started = time.perf_counter()
        child = subprocess.Popen(["curl", "-sSf", "-o", str(target), url])
        _, status, usage = os.wait4(child.pid, 0)
        walls.append(time.perf_counter() - started)
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"curl {url} failed")
        sizes.append(target.stat().st_size)
        rss.append(usage.ru_maxrss * 1024)
        target.unlink()
    wall = median(walls)
    return {"throughput": sizes[0] / wall, "wall": wall, "walls": walls, "max_rss": max(rss)}


def measure(size: int, s3_endpoint: str, context_runs: bool) -> dict[str, Any]:
    """Worker side: a warm-up run, then one big run into each storage, then bare S3."""
    from prefect.utilities.asyncutils import run_coro_as_sync

    from bench.fakectl import FakeClient
    from bench.methods import LogWatch, method_at_fake
    from testkit.prefect_stack import save_s3_bucket
    from toolflows.engine import run_tool_method

    fake = FakeClient.from_env()
    s3 = save_s3_bucket(s3_endpoint, BUCKET, BLOCK_NAME)
    storages = {"local": None, "s3": f"s3-bucket/{BLOCK_NAME}"}
    watch = LogWatch("prefect.task_runs", "Downloaded %d bytes as %s")

    def one_run(storage: str | None, file_size: int) -> dict[str, Any]:
        method = method_at_fake(
            REPLICATE, storage=storage, interval_seconds=0.05, max_wait_seconds=600
        )
        fake.reset()
        fake.script("replicate", polls_until_done=0, file_size=file_size)
        watch.seen.clear()
        with RssSampler(interval=0.005) as memory:
            started = time.perf_counter()
            result = run_coro_as_sync(run_tool_method(method, REPLICATE_PARAMS))
            flow_wall = time.perf_counter() - started
            returned_at = time.time()
        stored = result.files[0]
        if stored.size != file_size or stored.sha256 != fake.expected_sha256(result.task_id):
            raise AssertionError(f"stored {stored.size} bytes, sha256 {stored.sha256}: wrong")
        (_, path, query, requested_at), *_ = fake.requests(origin="cdn")
        # The engine's "Downloaded N bytes" line marks the end; without it, the
        # flow's return (a little later: artifacts, final state) stands in.
        downloaded_at = watch.seen[0][0] if watch.seen else returned_at
        transfer = downloaded_at - requested_at
        if stored.uri.startswith("file://"):
            Path(stored.uri.removeprefix("file://")).unlink()
        else:
            key = stored.uri.split("/", 3)[3]
            head = s3.head_object(Bucket=BUCKET, Key=key)
            assert head["ContentLength"] == file_size, head
            s3.delete_object(Bucket=BUCKET, Key=key)  # moto keeps objects in memory
        return {
            "bytes": file_size,
            "transfer_seconds": transfer,
            "throughput": file_size / transfer,
            "flow_wall": flow_wall,
            "end_source": "log" if watch.seen else "flow return",
            "rss_before": memory.baseline,
            "rss_peak": memory.peak,
            "rss_growth": memory.growth,
            "url": f"{os.environ['BENCH_FAKE_CDN_URL']}{path}",
            "query": query,
        }

    for storage in storages.values():
        one_run(storage, MIB)  # warm-up: modules, clients, the block document
    results = {name: one_run(storage, size) for name, storage in storages.items()}
    if context_runs:
        results["bare_s3"] = _bare_s3(results["s3"]["url"], s3, size)
        results["moto_alone"] = _moto_alone(s3, size)
    results["url"] = results["s3"]["url"]
    return results


def _bare_s3(url: str, s3: Any, size: int) -> dict[str, Any]:
    """httpx stream to a boto3 multipart upload, parts sent in turn: the floor on moto."""
    import httpx

    key = "bare/output.mp4"
    upload_id = s3.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
    parts: list[dict[str, Any]] = []
    buffer = bytearray()
    usage = resource.getrusage(resource.RUSAGE_SELF)

    def send(data: bytes) -> None:
        number = len(parts) + 1
        answer = s3.upload_part(
            Bucket=BUCKET, Key=key, UploadId=upload_id, PartNumber=number, Body=data
        )
        parts.append({"PartNumber": number, "ETag": answer["ETag"]})

    started = time.perf_counter()
    with httpx.Client(timeout=60) as client, client.stream("GET", url) as response:
        for chunk in response.iter_bytes():
            buffer += chunk
            while len(buffer) >= PART_BYTES:
                send(bytes(buffer[:PART_BYTES]))
                del buffer[:PART_BYTES]
    if buffer:
        send(bytes(buffer))
    s3.complete_multipart_upload(
        Bucket=BUCKET, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
    )
    wall = time.perf_counter() - started
    s3.delete_object(Bucket=BUCKET, Key=key)
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "bytes": size,
        "transfer_seconds": wall,
        "throughput": size / wall,
        "cpu": (after.ru_utime + after.ru_stime) - (usage.ru_utime + usage.ru_stime),
    }


def _moto_alone(s3: Any, size: int) -> dict[str, Any]:
    """8 MiB parts from memory to moto, one after the other: the ceiling of any S3 row."""
    key = "bare/from-memory.bin"
    part = os.urandom(PART_BYTES)
    upload_id = s3.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
    parts = []
    started = time.perf_counter()
    for number in range(1, max(1, size // PART_BYTES) + 1):
        answer = s3.upload_part(
            Bucket=BUCKET, Key=key, UploadId=upload_id, PartNumber=number, Body=part
        )
        parts.append({"PartNumber": number, "ETag": answer["ETag"]})
    s3.complete_multipart_upload(
        Bucket=BUCKET, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
    )
    wall = time.perf_counter() - started
    s3.delete_object(Bucket=BUCKET, Key=key)
    sent = len(parts) * PART_BYTES
    return {"bytes": sent, "transfer_seconds": wall, "throughput": sent / wall}
