"""Find the job id, links, status, outputs and progress in a provider's JSON (SPEC §4.2-4.5).

Payloads come from untrusted providers in every shape, so every function here accepts
any JSON value and never raises on it (only a malformed *setting* raises, as
``CONFIG_INVALID``), and every search is bounded in depth and in work, so a huge or
deeply nested payload costs little and cannot exhaust the stack.
"""

from __future__ import annotations

import math
import re
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from itertools import islice
from typing import Any, TypeVar

from toolflows.core.errors import ErrorCode, ToolflowsError
from toolflows.core.paths import get_path
from toolflows.core.redact import display_text

MAX_DEPTH = 32
"""Deepest nesting searched for outputs; real outputs sit a few levels down."""
MAX_NODES = 100_000
"""Values looked at by one recursive search, so a huge payload costs bounded time."""
MAX_ITEMS = 10_000
"""Entries of one object or list looked at by a one-level search."""
MAX_REASON_PARTS = 20
"""Items of a list of errors joined into one reason."""


class JobState(StrEnum):
    """Where a remote job stands; only PENDING keeps the engine polling."""

    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class Found:
    """A value found in a payload, with its dotted path so logs can say where it came from."""

    path: str
    value: str


@dataclass(frozen=True)
class JobStatus:
    """The job's state, with its value and path as sent, cut and escaped for logs and errors."""

    state: JobState
    value: str | None
    path: str | None
    reason: str | None


@dataclass(frozen=True)
class OutputRef:
    """An output to download; ``path`` says where it was found, for the result and logs."""

    url: str
    path: str
    thumbnail: bool


@dataclass(frozen=True)
class Progress:
    """What the provider says about progress, to feed the Prefect progress artifact."""

    fraction: float | None
    queue_position: int | None


TASK_ID_KEYS = (
    "task_id",
    "taskId",
    "job_id",
    "jobId",
    "prediction_id",
    "predictionId",
    "video_id",
    "videoId",
    "generation_id",
    "generationId",
    "request_id",
    "requestId",
    "id",
    "name",
)
ID_CONTAINERS = ("data", "result", "task")
STATUS_CONTAINERS = ("data", "task", "result", "generations_by_pk")
STATUS_KEYS = ("status", "state", "task_status", "taskStatus")
FINISH_REASON_KEYS = ("finish_reason", "finishReason")
LINK_PLACES = ("", "data", "result", "task")
STATUS_LINK_KEYS = ("urls.get", "status_url", "statusUrl", "polling_url", "pollingUrl")
CANCEL_LINK_KEYS = ("cancel_url", "cancelUrl", "urls.cancel")
RESULT_LINK_KEYS = ("response_url", "responseUrl")
PROGRESS_PLACES = ("data", "task", "result")
PROGRESS_KEYS = ("progress", "percent", "percentage", "progress_percent")
QUEUE_POSITION_KEYS = ("queue_position", "queuePosition")
ECHO_KEYS = frozenset({"input", "inputs", "request", "params", "parameters", "arguments"})
JOB_LINK_KEYS = frozenset(
    {
        "status_url",
        "statusUrl",
        "response_url",
        "responseUrl",
        "cancel_url",
        "cancelUrl",
        "polling_url",
        "pollingUrl",
        "urls",
        "logs",
    }
)
OUTPUT_KEYS = (
    "video_url",
    "videoUrl",
    "result_url",
    "resultUrl",
    "output_url",
    "outputUrl",
    "file_url",
    "fileUrl",
    "download_url",
    "downloadUrl",
    "audio_url",
    "audioUrl",
    "image_url",
    "imageUrl",
    "url",
    "uri",
    "sample",
    "video",
    "audio",
    "image",
    "download",
    "output",
    "outputs",
    "assets",
    "videos",
    "images",
)
THUMBNAIL_KEYS = (
    "thumbnail_url",
    "thumbnailUrl",
    "thumbnail",
    "gif_url",
    "gifUrl",
    "preview",
    "preview_url",
    "previewUrl",
    "poster",
    "poster_url",
    "posterUrl",
    "cover_url",
    "coverUrl",
)
OUTPUT_RANK = {key: rank for rank, key in enumerate(OUTPUT_KEYS)}
THUMBNAIL_RANK = {key: rank for rank, key in enumerate(THUMBNAIL_KEYS)}

SUCCESS_WORDS = frozenset(
    {"completed", "complete", "success", "succeeded", "succeed", "done", "ready", "finished"}
)
FAILURE_WORDS = frozenset(
    {
        "failed",
        "fail",
        "failure",
        "error",
        "errored",
        "rejected",
        "expired",
        "timeout",
        "timed_out",
        "moderated",
        "content_moderated",
        "request_moderated",
        "aborted",
        "not_found",
        "task_not_found",
    }
)
CANCELLED_WORDS = frozenset({"cancelled", "canceled"})
# An error object's status or id is the error's (an HTTP code, a trace id), not the job's.
NOT_JOB_OBJECTS = frozenset({"error", "errors"})
# An envelope's "message" saying all went well is no failure reason.
OK_MESSAGES = SUCCESS_WORDS | {"ok", "okay"}
# After ``error`` (its message, its detail, or itself), in SPEC §4.3's order.
JOB_REASON_KEYS = (
    "errorMessage",
    "error_message",
    "errorMsg",
    "failure_detail",
    "failure",
    "failure_reason",
    "failureCode",
    "task_status_msg",
    "status_msg",
    "detail",
    "details",
)
MESSAGE_KEYS = ("message", "detail", "msg")

_ABSOLUTE_URL = re.compile(r"https?://\S", re.IGNORECASE)
_DATA_URI = re.compile(r"data:", re.IGNORECASE)
_SEPARATORS = re.compile(r"[\s_\-]+")
_Parsed = TypeVar("_Parsed")


# --- job id and links (§4.2) ---------------------------------------------------------


def find_task_id(payload: Any, task_id_path: str | None = None) -> Found | None:
    """The job id of a submit answer: ``task_id_path`` if set, else the first id by name.

    Names are tried in SPEC order, each at the top level, then under the job containers,
    then under any other object, so an envelope's trace id never beats the job's id.
    """
    path = _configured_path(task_id_path, "taskIdPath")
    if path is not None:
        text = _scalar_text(_value_at(payload, path))
        return None if text is None else Found(path, text)
    if not isinstance(payload, dict):
        return None
    places = [
        ("", payload),
        *_containers(payload, ID_CONTAINERS),
        *_other_objects(payload, ID_CONTAINERS),
    ]
    for name in TASK_ID_KEYS:
        for prefix, holder in places:
            text = _scalar_text(holder.get(name))
            if text is not None:
                return Found(_join(prefix, name), text)
    return None


def find_status_link(payload: Any) -> Found | None:
    """The status link a submit answer carries, used when no ``statusUrl`` is configured."""
    return _find_link(payload, STATUS_LINK_KEYS)


def find_cancel_link(payload: Any) -> Found | None:
    """The cancel link a submit answer carries, used when no ``cancelUrl`` is configured."""
    return _find_link(payload, CANCEL_LINK_KEYS)


def find_result_link(payload: Any) -> Found | None:
    """The link to fetch the result from after success (FAL's status holds no output)."""
    return _find_link(payload, RESULT_LINK_KEYS)


def _find_link(payload: Any, names: tuple[str, ...]) -> Found | None:
    if not isinstance(payload, dict):
        return None
    for name in names:
        for place in LINK_PLACES:
            path = _join(place, name)
            value = get_path(payload, path)
            if isinstance(value, str) and value.strip():
                return Found(path, value)
    return None


# --- status (§4.3) -------------------------------------------------------------------


@dataclass(frozen=True)
class _Field:
    """A status-like field: its text, its path, and the object holding it (for ``error``)."""

    text: str
    path: str
    holder: Any


def detect_status(
    payload: Any,
    status_path: str | None = None,
    success_values: Iterable[str] = (),
    failure_values: Iterable[str] = (),
) -> JobStatus:
    """The job's state in a status answer; anything unrecognised is PENDING.

    The user's extra values win over the built-in words, so a provider whose words
    collide with ours can still be configured.
    """
    extra_success = _normalised_values(success_values, "successValues")
    extra_failure = _normalised_values(failure_values, "failureValues")
    path = _configured_path(status_path, "statusPath")
    field = _configured_status(payload, path) if path is not None else _auto_status(payload)
    if field is not None:
        return _status_of_field(payload, field, extra_success, extra_failure)
    if path is not None or not isinstance(payload, dict):
        return JobStatus(JobState.PENDING, None, None, None)
    return _status_without_field(payload, extra_success)


def failure_reason(payload: Any) -> str | None:
    """The provider's reason for a failure, the job's own before its envelope's."""
    field = _auto_status(payload)
    return _reason(payload, payload if field is None else field.holder)


def _configured_status(payload: Any, path: str) -> _Field | None:
    text = _status_text(_value_at(payload, path))
    if text is None:
        return None
    parent, _, _ = path.rpartition(".")
    holder = _value_at(payload, parent) if parent else payload
    return _Field(text, path, holder)


def _auto_status(payload: Any) -> _Field | None:
    """The first status field, the job containers before the top level (the envelope)."""
    if not isinstance(payload, dict):
        return None
    return _first_field(_status_places(payload), STATUS_KEYS)


def _status_places(payload: dict[Any, Any]) -> list[tuple[str, dict[Any, Any]]]:
    return [
        *_containers(payload, STATUS_CONTAINERS),
        ("", payload),
        *_other_objects(payload, STATUS_CONTAINERS),
    ]


def _first_field(places: list[tuple[str, dict[Any, Any]]], names: tuple[str, ...]) -> _Field | None:
    for prefix, holder in places:
        for name in names:
            text = _status_text(holder.get(name))
            if text is not None:
                return _Field(text, _join(prefix, name), holder)
    return None


def _status_of_field(
    payload: Any, field: _Field, extra_success: frozenset[str], extra_failure: frozenset[str]
) -> JobStatus:
    state = _classify(field.text, extra_success, extra_failure)
    if state is JobState.SUCCEEDED and _has_error_beside(field.holder):
        # FAL reports a failed job as COMPLETED with an error next to it.
        state = JobState.FAILED
    if state in (JobState.PENDING, JobState.SUCCEEDED):
        return _shown_status(state, field, None)
    reason = _reason(payload, field.holder)
    if reason is None and state is JobState.FAILED:
        reason = f'job failed with status "{field.text}"'
    return _shown_status(state, field, reason)


def _status_without_field(payload: dict[Any, Any], extra_success: frozenset[str]) -> JobStatus:
    """Operation style (``done``), else a ``finish_reason``, else still pending."""
    done = payload.get("done")
    if isinstance(done, bool):
        if not done:
            return JobStatus(JobState.PENDING, str(done), "done", None)
        if _has_content(payload.get("error")):
            reason = _reason(payload, payload) or "operation failed without an error message"
            return JobStatus(JobState.FAILED, str(done), "done", reason)
        return JobStatus(JobState.SUCCEEDED, str(done), "done", None)
    finish = _first_field(_status_places(payload), FINISH_REASON_KEYS)
    if finish is None:
        return JobStatus(JobState.PENDING, None, None, None)
    if _normalise(finish.text) in {"success"} | extra_success:
        return _shown_status(JobState.SUCCEEDED, finish, None)
    reason = _reason(payload, finish.holder) or f'job failed with finish reason "{finish.text}"'
    return _shown_status(JobState.FAILED, finish, reason)


def _shown_status(state: JobState, field: _Field, reason: str | None) -> JobStatus:
    """The status with its value and path as logs and errors show them: cut and escaped."""
    return JobStatus(state, display_text(field.text), display_text(field.path), reason)


def _classify(text: str, extra_success: frozenset[str], extra_failure: frozenset[str]) -> JobState:
    word = _normalise(text)
    if word in extra_failure:
        return JobState.FAILED
    if word in extra_success:
        return JobState.SUCCEEDED
    if word in CANCELLED_WORDS:
        return JobState.CANCELLED
    if word in FAILURE_WORDS:
        return JobState.FAILED
    if word in SUCCESS_WORDS:
        return JobState.SUCCEEDED
    return JobState.PENDING


def _normalise(text: str) -> str:
    """Case-insensitive, with ``-``, ``_`` and spaces alike (``Timed-Out`` is ``timed_out``)."""
    return _SEPARATORS.sub("_", text.strip().casefold())


def _normalised_values(values: Iterable[Any] | None, setting: str) -> frozenset[str]:
    if values is None:
        return frozenset()
    if isinstance(values, str):
        values = (values,)
    try:
        items = list(islice(values, MAX_ITEMS))
    except TypeError:
        raise ToolflowsError(
            ErrorCode.CONFIG_INVALID, f"{setting} must be a list of values"
        ) from None
    words = set()
    for item in items:
        text = _status_text(item)
        if text is None:
            raise ToolflowsError(
                ErrorCode.CONFIG_INVALID, f"{setting} holds {item!r:.40}, not a status value"
            )
        words.add(_normalise(text))
    return frozenset(words)


def _has_error_beside(holder: Any) -> bool:
    return isinstance(holder, dict) and (
        _has_content(holder.get("error")) or _has_content(holder.get("error_type"))
    )


def _has_content(value: Any) -> bool:
    """Whether an error field says anything: ``null``, ``""``, ``0``, ``{}`` mean no error.

    A non-empty object too deep to read is taken as an error: better a false failure
    than a false success.
    """
    for steps, item in _walk(value):
        if isinstance(item, str) and item.strip():
            return True
        if isinstance(item, (bool, int, float)) and item:
            return True
        if isinstance(item, (dict, list)) and item and len(steps) >= MAX_DEPTH:
            return True
    return False


# --- failure reason --------------------------------------------------------------------


def _reason(payload: Any, holder: Any) -> str | None:
    """The job's own reason (in the object holding its status), then its envelope's."""
    scopes = [scope for scope in (holder, payload) if isinstance(scope, dict)]
    if len(scopes) == 2 and scopes[0] is scopes[1]:
        scopes.pop()
    for scope in scopes:
        reason = _job_reason(scope)
        if reason is not None:
            return reason
    for scope in scopes:
        message = _readable(scope.get("message"))
        if message is not None and _normalise(message) not in OK_MESSAGES:
            return message
    return None


def _job_reason(scope: dict[Any, Any]) -> str | None:
    """The listed reason fields, then the message of any other error object (``task_error``)."""
    error = scope.get("error")
    if isinstance(error, (str, dict)):
        reason = _readable(error)
        if reason is not None:
            return reason
    for key in JOB_REASON_KEYS:
        reason = _readable(scope.get(key))
        if reason is not None:
            return reason
    for key, value in islice(scope.items(), MAX_ITEMS):
        if isinstance(key, str) and isinstance(value, dict) and _names_an_error(key):
            reason = _readable(value)
            if reason is not None:
                return reason
    return None


def _names_an_error(key: str) -> bool:
    """``task_error``, ``lastError``, ``error_info``: an error object other than ``error``."""
    return key != "error" and "error" in key.lower()


def _readable(value: Any, depth: int = 0) -> str | None:
    """A reason as text; FastAPI's ``[{"loc": [...], "msg": ...}]`` becomes ``loc: msg``."""
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, (int, float)):
        return _scalar_text(value)
    if depth >= 2:
        return None
    if isinstance(value, list):
        parts = (_readable(item, depth + 1) for item in islice(value, MAX_REASON_PARTS))
        return "; ".join(part for part in parts if part) or None
    if isinstance(value, dict):
        message = next(
            (text for key in MESSAGE_KEYS if (text := _readable(value.get(key), depth + 1))),
            None,
        )
        location = _location(value.get("loc"))
        return f"{location}: {message}" if message and location else message
    return None


def _location(loc: Any) -> str | None:
    if not isinstance(loc, list):
        return None
    steps = (_scalar_text(step) for step in islice(loc, MAX_REASON_PARTS))
    return ".".join(step for step in steps if step) or None


# --- outputs (§4.5) ------------------------------------------------------------------

# Tiers of outputs, best first: one is used only when the ones before found nothing.
_BY_KEY, _ANY_LINK, _THUMBNAIL = range(3)


@dataclass(frozen=True)
class _Candidate:
    """A URL that may be an output; ``rank``, then ``order`` (breadth first), pick the primary."""

    url: str
    steps: tuple[str | int, ...]
    tier: int
    rank: tuple[int, ...]
    order: int


def find_outputs(
    payload: Any, output_path: str | None = None, download_all: bool = False
) -> list[OutputRef]:
    """The outputs to download: the primary first, then the rest of its list (a batch).

    Outputs come from priority keys, else from any http(s) link, else from thumbnail
    keys. With ``download_all``, every other output of that kind follows. No URL twice.
    """
    path = _configured_path(output_path, "outputPath")
    if path is not None:
        return _outputs_at(payload, path)
    candidates = _collect_candidates(payload)
    for tier in (_BY_KEY, _ANY_LINK, _THUMBNAIL):
        ranked = sorted(
            (candidate for candidate in candidates if candidate.tier == tier),
            key=lambda candidate: (candidate.rank, candidate.order),
        )
        if ranked:
            chosen = [ranked[0], *_list_siblings(ranked[0], ranked)]
            if download_all:
                chosen.extend(ranked)
            return _unique(
                OutputRef(candidate.url, _dotted(candidate.steps), candidate.tier == _THUMBNAIL)
                for candidate in chosen
            )
    return []


def _outputs_at(payload: Any, path: str) -> list[OutputRef]:
    """Outputs at the user's ``outputPath``: a URL, a ``{"url"}`` object, or a list of them."""
    value = _value_at(payload, path)
    if isinstance(value, list):
        items = [(f"{path}.{index}", item) for index, item in enumerate(islice(value, MAX_ITEMS))]
    else:
        items = [(path, value)]
    refs = []
    for item_path, item in items:
        if isinstance(item, str) and _is_url(item, root_relative=True):
            refs.append(OutputRef(item, item_path, False))
        elif isinstance(item, dict):
            key = next(
                (key for key in OUTPUT_KEYS if _is_url(item.get(key), root_relative=True)), None
            )
            if key is not None:
                refs.append(OutputRef(item[key], f"{item_path}.{key}", False))
    return _unique(refs)


def _collect_candidates(payload: Any) -> list[_Candidate]:
    """Every URL an output could be, breadth first, outside the job's links and echoes."""
    candidates: list[_Candidate] = []
    for steps, value in _walk(payload, skip=_never_searched):
        if not isinstance(value, str):
            continue
        thumbnail = _thumbnail_rank(steps)
        key = _naming_key(steps)
        if key in OUTPUT_RANK and _is_url(value, root_relative=True):
            if thumbnail is None:
                tier, rank = _BY_KEY, (OUTPUT_RANK[key],)
            else:
                tier, rank = _THUMBNAIL, (thumbnail, OUTPUT_RANK[key])
            candidates.append(_Candidate(value, steps, tier, rank, len(candidates)))
        elif (
            key in THUMBNAIL_RANK and thumbnail is not None and _is_url(value, root_relative=False)
        ):
            candidates.append(
                _Candidate(value, steps, _THUMBNAIL, (thumbnail, -1), len(candidates))
            )
        elif thumbnail is None and _ABSOLUTE_URL.match(value):
            candidates.append(_Candidate(value, steps, _ANY_LINK, (), len(candidates)))
    return candidates


def _naming_key(steps: tuple[str | int, ...]) -> str | None:
    """The key that names a value: its own, or its list's (``output`` for ``output.0``)."""
    if steps and isinstance(steps[-1], str):
        return steps[-1]
    if len(steps) >= 2 and isinstance(steps[-1], int) and isinstance(steps[-2], str):
        return steps[-2]
    return None


def _thumbnail_rank(steps: tuple[str | int, ...]) -> int | None:
    """The rank of the outermost thumbnail key on the way, None outside thumbnails."""
    return next(
        (
            THUMBNAIL_RANK[step]
            for step in steps
            if isinstance(step, str) and step in THUMBNAIL_RANK
        ),
        None,
    )


def _list_siblings(primary: _Candidate, ranked: list[_Candidate]) -> list[_Candidate]:
    """The other items of the list the primary sits in, in list order (a batch of images)."""
    indices = [at for at, step in enumerate(primary.steps) if isinstance(step, int)]
    if not indices:
        return []
    at = indices[-1]
    prefix, suffix = primary.steps[:at], primary.steps[at + 1 :]
    siblings = [
        candidate
        for candidate in ranked
        if len(candidate.steps) == len(primary.steps)
        and isinstance(candidate.steps[at], int)
        and candidate.steps[:at] == prefix
        and candidate.steps[at + 1 :] == suffix
    ]
    return sorted(siblings, key=lambda candidate: candidate.steps[at])


def _never_searched(key: str) -> bool:
    """The job's own links, webhooks, logs and request echoes hold no output."""
    lowered = key.lower()
    return key in JOB_LINK_KEYS or "callback" in lowered or "webhook" in lowered or _is_echo(key)


def _is_url(value: Any, root_relative: bool) -> bool:
    if not isinstance(value, str):
        return False
    if _ABSOLUTE_URL.match(value) or _DATA_URI.match(value):
        return True
    return root_relative and len(value) > 1 and value[0] == "/" and value[1] != "/"


def _unique(refs: Iterable[OutputRef]) -> list[OutputRef]:
    seen: set[str] = set()
    unique = []
    for ref in refs:
        if ref.url not in seen:
            seen.add(ref.url)
            unique.append(ref)
    return unique


# --- progress --------------------------------------------------------------------------


def find_progress(payload: Any) -> Progress | None:
    """Progress and queue position, for the progress artifact; None when neither is sent."""
    if not isinstance(payload, dict):
        return None
    places = [payload] + [
        payload[key] for key in PROGRESS_PLACES if isinstance(payload.get(key), dict)
    ]
    fraction = _first_parsed(places, PROGRESS_KEYS, _fraction)
    queue_position = _first_parsed(places, QUEUE_POSITION_KEYS, _queue_position)
    if fraction is None and queue_position is None:
        return None
    return Progress(fraction, queue_position)


def _first_parsed(
    places: list[dict[Any, Any]],
    names: tuple[str, ...],
    parse: Callable[[Any], _Parsed | None],
) -> _Parsed | None:
    for holder in places:
        for name in names:
            parsed = parse(holder.get(name))
            if parsed is not None:
                return parsed
    return None


def _fraction(value: Any) -> float | None:
    """0..1 as is, up to 100 a percentage; a trailing ``%`` always means a percentage."""
    percent = isinstance(value, str) and value.strip().endswith("%")
    number = _number(value.strip().removesuffix("%") if isinstance(value, str) else value)
    if number is None or number < 0 or number > 100:
        return None
    return number / 100 if percent or number > 1 else number


def _queue_position(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value if value >= 0 else None
    number = _number(value)
    if number is None or number < 0 or not number.is_integer():
        return None
    return int(number)


def _number(value: Any) -> float | None:
    """A finite number from a JSON number or numeric string; None for anything else."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        number = float(value)
    except (ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


# --- shared helpers ------------------------------------------------------------------


def _configured_path(path: Any, setting: str) -> str | None:
    """A user-set dotted path, or None when unset; a non-string is a config mistake."""
    if path is None:
        return None
    if not isinstance(path, str):
        raise ToolflowsError(
            ErrorCode.CONFIG_INVALID, f"{setting} must be a dotted path like data.status"
        )
    return path.strip() or None


def _value_at(payload: Any, path: str) -> Any:
    try:
        return get_path(payload, path)
    except ValueError:
        # A step like "²" passes str.isdigit() but not int(): no such value.
        return None


def _scalar_text(value: Any) -> str | None:
    """A non-blank string or a finite number as text; bools are flags, never ids."""
    if isinstance(value, str):
        return value if value.strip() else None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    try:
        return str(value)
    except ValueError:  # an int longer than Python's int-to-str digit limit
        return None


def _status_text(value: Any) -> str | None:
    """A status value as sent: strings, numbers and bools count; objects and lists do not."""
    return str(value) if isinstance(value, bool) else _scalar_text(value)


def _containers(
    payload: dict[Any, Any], names: tuple[str, ...]
) -> list[tuple[str, dict[Any, Any]]]:
    return [(name, payload[name]) for name in names if isinstance(payload.get(name), dict)]


def _other_objects(
    payload: dict[Any, Any], containers: tuple[str, ...]
) -> list[tuple[str, dict[Any, Any]]]:
    """The top level's other nested objects, echoes of the request and errors aside."""
    return [
        (key, value)
        for key, value in islice(payload.items(), MAX_ITEMS)
        if isinstance(key, str)
        and isinstance(value, dict)
        and key not in containers
        and key not in NOT_JOB_OBJECTS
        and not _is_echo(key)
    ]


def _is_echo(key: str) -> bool:
    """Echoes of the request hold the user's inputs (URLs, ids, statuses), never the job's."""
    return key in ECHO_KEYS or key.endswith(("settings", "Settings"))


def _walk(
    root: Any, skip: Callable[[str], bool] | None = None
) -> Iterator[tuple[tuple[str | int, ...], Any]]:
    """Every value under ``root`` (``root`` first) breadth first, as (steps, value).

    Bounded by MAX_DEPTH and MAX_NODES; objects under keys that ``skip`` rejects, and
    entries with non-string keys (not JSON), are left out.
    """
    queue: deque[tuple[tuple[str | int, ...], Any]] = deque([((), root)])
    budget = MAX_NODES
    while queue:
        steps, value = queue.popleft()
        yield steps, value
        if budget <= 0 or len(steps) >= MAX_DEPTH or not isinstance(value, (dict, list)):
            continue
        children: Iterable[tuple[Any, Any]]
        children = value.items() if isinstance(value, dict) else enumerate(value)
        for step, child in islice(children, budget):
            budget -= 1
            if isinstance(value, dict) and not isinstance(step, str):
                continue
            if skip is None or isinstance(step, int) or not skip(step):
                queue.append(((*steps, step), child))


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _dotted(steps: tuple[str | int, ...]) -> str:
    return ".".join(str(step) for step in steps)
