"""Definitions load as the original system wrote them; bad ones name the field."""

from __future__ import annotations

import json

import pytest

from toolflows.core.definition import parse_definition, slugify
from toolflows.core.errors import ErrorCode, ToolflowsError

ORIGINAL_ROW = {
    "inventoryKey": "heygen",
    "name": "create_avatar_video_v2",
    "description": "Create an avatar video",
    "endpoint": "https://api.heygen.com/v2/video/generate",
    "httpMethod": "POST",
    "requestSchema": json.dumps({"type": "object", "required": ["video_inputs"]}),
    "responseSchema": "{}",
    "adapterType": "http",
    "adapterConfig": json.dumps(
        {
            "headers": {"X-Api-Key": "${HEYGEN_API_KEY}"},
            "polling": {"statusUrl": "/v1/video_status.get?video_id={id}"},
        }
    ),
    "enabled": True,
}


def row(**changes):
    return {**ORIGINAL_ROW, **changes}


def config_error(raw) -> str:
    with pytest.raises(ToolflowsError) as raised:
        parse_definition(raw)
    assert raised.value.code is ErrorCode.CONFIG_INVALID
    assert raised.value.exit_code == 2
    return raised.value.message


def test_original_row_with_adapter_config_as_json_string_loads_unchanged():
    definition = parse_definition(ORIGINAL_ROW)

    assert definition.slug == "heygen-create-avatar-video-v2"
    assert definition.qualified_name == "heygen/create_avatar_video_v2"
    assert definition.adapter_config.headers == {"X-Api-Key": "${HEYGEN_API_KEY}"}
    assert definition.adapter_config.polling.status_url == "/v1/video_status.get?video_id={id}"
    assert definition.request_schema == {"type": "object", "required": ["video_inputs"]}
    # Defaults of the SPEC §2 table.
    polling = definition.adapter_config.polling
    assert (polling.max_wait_seconds, polling.interval_seconds) == (300, 5)
    assert (polling.backoff_factor, polling.max_interval_seconds, polling.jitter) == (1.5, 30, 0.1)
    assert polling.cancel_on_timeout is True
    assert definition.adapter_config.timeout == 30
    assert definition.adapter_config.max_download_bytes == 10 * 1024**3


def test_snake_case_and_object_adapter_config_give_the_same_definition():
    snake = {
        "inventory_key": "heygen",
        "name": "create_avatar_video_v2",
        "description": "Create an avatar video",
        "endpoint": "https://api.heygen.com/v2/video/generate",
        "http_method": "post",
        "request_schema": {"type": "object", "required": ["video_inputs"]},
        "response_schema": {},
        "adapter_type": "http",
        "adapter_config": {
            "headers": {"X-Api-Key": "${HEYGEN_API_KEY}"},
            "polling": {"status_url": "/v1/video_status.get?video_id={id}"},
        },
        "enabled": True,
    }
    assert parse_definition(snake) == parse_definition(ORIGINAL_ROW)


def test_header_names_keep_their_spelling():
    definition = parse_definition(
        row(adapterConfig={"headers": {"X-Runway-Version": "2024-11-06", "xApiKey": "k"}})
    )
    assert definition.adapter_config.headers == {"X-Runway-Version": "2024-11-06", "xApiKey": "k"}


def test_database_columns_beside_the_definition_are_ignored():
    definition = parse_definition(row(id=17, createdAt="2024-01-01T00:00:00Z"))
    assert definition.name == "create_avatar_video_v2"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"endpoint": None}, "endpoint"),
        ({"endpoint": "api.heygen.com/v2/video/generate"}, "endpoint"),
        ({"endpoint": "ftp://api.heygen.com/x"}, "endpoint"),
        ({"adapterConfig": {"polling": {"statusUrl": "/s", "pollEvery": 3}}}, "pollEvery"),
        ({"adapterConfig": {"polling": {"intervalSeconds": -1}}}, "intervalSeconds"),
        ({"adapterConfig": {"polling": {"maxWaitSeconds": 0}}}, "maxWaitSeconds"),
        ({"adapterConfig": {"polling": {"backoffFactor": 0.5}}}, "backoffFactor"),
        ({"adapterConfig": {"headerz": {}}}, "headerz"),
        ({"adapterConfig": "{not json"}, "adapterConfig"),
        ({"requestSchema": "[1, 2]"}, "requestSchema"),
        ({"httpMethod": "FETCH"}, "httpMethod"),
        ({"adapterType": "grpc"}, "adapterType"),
        ({"inventoryKey": ""}, "inventoryKey"),
    ],
)
def test_invalid_definitions_name_the_field(changes, field):
    raw = row(**changes)
    if changes.get("endpoint", "") is None:
        del raw["endpoint"]
    assert field in config_error(raw)


def test_a_key_given_twice_is_refused():
    assert "given twice" in config_error(row(http_method="GET"))


def test_a_definition_must_be_an_object():
    assert "JSON object" in config_error(["not", "a", "definition"])


def test_endpoint_may_hold_placeholders():
    definition = parse_definition(row(endpoint="https://${HOST}/v2/video/generate"))
    assert definition.endpoint == "https://${HOST}/v2/video/generate"


def test_slugify_makes_prefect_block_names():
    assert slugify("HeyGen-Create_Avatar Video.v2") == "heygen-create-avatar-video-v2"


@pytest.mark.parametrize(
    ("changes", "written", "meant"),
    [
        ({"adapterConfig": {"polling": {"statusURL": "/s?id={id}"}}}, "statusURL", "statusUrl"),
        ({"adapterConfig": {"polling": {"TaskIdPath": "data.id"}}}, "TaskIdPath", "taskIdPath"),
        ({"adapterConfig": {"AllowedHosts": ["a.test"]}}, "AllowedHosts", "allowedHosts"),
        ({"httpMETHOD": "GET"}, "httpMETHOD", "httpMethod"),
        ({"Endpoint": "https://other.test/x"}, "Endpoint", "endpoint"),
    ],
)
def test_a_known_key_spelled_neither_camel_nor_snake_case_is_refused(changes, written, meant):
    message = config_error(row(**changes))
    assert written in message
    assert f"did you mean {meant}" in message
