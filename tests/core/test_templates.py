"""URL templates, ${NAME} placeholders and link resolution."""

from __future__ import annotations

from typing import Any

import pytest

from toolflows.core.errors import ErrorCode, ToolflowsError
from toolflows.core.templates import (
    env_placeholders,
    render_template,
    resolve_link,
    substitute_env,
    template_fields,
)

PAYLOAD = {
    "file_id": "f 1",
    "data": {"file_id": "abc/def", "count": 3, "ratio": 0.5, "ok": True, "items": ["x", "y"]},
    "empty": "",
    "nested": {"a": 1},
}
PARAMS = {"voice": "en-US", "options": {"model": "v2"}, "seed": 7}


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("/v1/video_status.get?video_id={id}", "/v1/video_status.get?video_id=job%3F1%26x"),
        ("/jobs/{id}/result?again={id}", "/jobs/job%3F1%26x/result?again=job%3F1%26x"),
        ("/files/{file_id}", "/files/f%201"),
        ("/files/{data.file_id}", "/files/abc/def"),  # "/" kept: operation names are paths
        ("/n/{data.count}/{data.ratio}/{data.ok}", "/n/3/0.5/true"),
        ("/i/{data.items.1}", "/i/y"),
        (
            "/voices/{params.voice}?m={params.options.model}&s={params.seed}",
            "/voices/en-US?m=v2&s=7",
        ),
        ("https://api.example.com/static", "https://api.example.com/static"),
        ("/keep/${API_KEY}/{id}", "/keep/${API_KEY}/job%3F1%26x"),  # ${...} is not a field
    ],
)
def test_render_template(template: str, expected: str) -> None:
    rendered = render_template(template, task_id="job?1&x", payload=PAYLOAD, params=PARAMS)
    assert rendered == expected


def test_operation_names_keep_their_slashes() -> None:
    rendered = render_template("/v1/{id}", task_id="projects/p/operations/op-1")
    assert rendered == "/v1/projects/p/operations/op-1"


def test_unicode_values_are_percent_encoded() -> None:
    assert render_template("/f/{name}", task_id=None, payload={"name": "été"}) == "/f/%C3%A9t%C3%A9"


@pytest.mark.parametrize(
    ("template", "task_id", "params", "field"),
    [
        ("/status/{id}", None, None, "{id}"),
        ("/files/{data.missing}", "t1", None, "{data.missing}"),
        ("/files/{empty}", "t1", None, "{empty}"),
        ("/files/{nested}", "t1", None, "{nested}"),  # an object cannot fill a URL
        ("/v/{params.voice}", "t1", None, "{params.voice}"),
        ("/v/{params.nope}", "t1", PARAMS, "{params.nope}"),
    ],
)
def test_a_field_without_a_value_is_a_config_error(
    template: str, task_id: str | None, params: dict[str, Any] | None, field: str
) -> None:
    with pytest.raises(ToolflowsError) as caught:
        render_template(template, task_id=task_id, payload=PAYLOAD, params=params)
    error = caught.value
    assert error.code is ErrorCode.CONFIG_INVALID
    assert field in error.message
    assert template in error.message
    assert error.task_id == task_id


def test_the_error_never_shows_a_secret_from_the_template() -> None:
    with pytest.raises(ToolflowsError) as caught:
        render_template("https://x.test/s/{missing}?api_key=sk-123456", task_id="t1")
    assert "sk-123456" not in caught.value.message
    assert "{missing}" in caught.value.message


@pytest.mark.parametrize(
    ("template", "fields"),
    [
        ("/v1/status?id={id}&f={data.file_id}&again={id}", ["id", "data.file_id"]),
        ("/v1/{params.model}/x", ["params.model"]),
        ("https://${HOST}/v1/{id}?key=${API_KEY}", ["id"]),
        ("/static", []),
    ],
)
def test_template_fields(template: str, fields: list[str]) -> None:
    assert template_fields(template) == fields


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("${HEYGEN_API_KEY}", ["HEYGEN_API_KEY"]),
        ("Bearer ${TOKEN_1} ${TOKEN_1} ${other}", ["TOKEN_1", "other"]),
        ("https://{id}/${HOST}", ["HOST"]),
        ("${not-a-name} $PLAIN {id} ${}", []),
    ],
)
def test_env_placeholders(text: str, names: list[str]) -> None:
    assert env_placeholders(text) == names


def test_substitute_env_replaces_every_occurrence() -> None:
    text = "Bearer ${TOKEN} for ${TOKEN} at ${HOST}/{id}"
    result = substitute_env(text, {"TOKEN": "t-1", "HOST": "api.test"})
    assert result == "Bearer t-1 for t-1 at api.test/{id}"


def test_substituted_values_are_not_expanded_again() -> None:
    assert substitute_env("${A}", {"A": "${B}", "B": "no"}) == "${B}"


def test_missing_variables_are_named_and_values_never_shown() -> None:
    with pytest.raises(ToolflowsError) as caught:
        substitute_env("${KNOWN} ${MISSING_ONE} ${MISSING_TWO}", {"KNOWN": "s3cr3t-value"})
    error = caught.value
    assert error.code is ErrorCode.CONFIG_INVALID
    assert "${MISSING_ONE}" in error.message
    assert "${MISSING_TWO}" in error.message
    assert "KNOWN" not in error.message
    assert "s3cr3t-value" not in error.message


@pytest.mark.parametrize(
    ("link", "expected"),
    [
        (
            "/v1/video_status.get?video_id=1",
            "https://api.heygen.com/v1/video_status.get?video_id=1",
        ),
        ("status/1", "https://api.heygen.com/v2/video/status/1"),
        ("../jobs/1", "https://api.heygen.com/v2/jobs/1"),
        ("?id=1", "https://api.heygen.com/v2/video/generate?id=1"),
        ("//eu.heygen.com/s/1", "https://eu.heygen.com/s/1"),
        ("https://queue.fal.run/r/1", "https://queue.fal.run/r/1"),
        ("  /trimmed  ", "https://api.heygen.com/trimmed"),
        ("/v1/status?id={id}", "https://api.heygen.com/v1/status?id={id}"),
    ],
)
def test_resolve_link_like_a_browser(link: str, expected: str) -> None:
    assert resolve_link("https://api.heygen.com/v2/video/generate", link) == expected


def test_relative_link_beside_a_bare_host() -> None:
    assert resolve_link("http://localhost:8080", "status/1") == "http://localhost:8080/status/1"
