"""A tool method definition: the original system's ``tool_methods`` row, validated.

The row is accepted as written for the original system (camelCase keys,
``adapterConfig`` as an object or a JSON string) or in snake_case. Everything
is checked here, before anything is sent, because a submit costs the user
money: a wrong definition must fail with ``CONFIG_INVALID`` naming the field.
"""

from __future__ import annotations

import json
import re
from dataclasses import fields
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel, to_snake

from toolflows.core.backoff import PollSchedule
from toolflows.core.errors import ErrorCode, ToolflowsError

HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
# Shortest delay between two status checks: 20 checks a second per job. Below it a
# schedule is a busy loop against someone's API (0 made ~22,000 instant checks).
MIN_POLL_INTERVAL_SECONDS = 0.05


class PollingConfig(BaseModel):
    """``adapterConfig.polling``: how to wait for the job (SPEC §2 table)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    status_url: str | None = Field(
        None, description="Status endpoint template, e.g. /v1/status?id={id}. Relative to endpoint."
    )
    max_wait_seconds: float = Field(300, gt=0, description="Deadline for the whole wait.")
    interval_seconds: float = Field(
        5, ge=MIN_POLL_INTERVAL_SECONDS, description="Delay before the first status check."
    )
    backoff_factor: float = Field(1.5, ge=1, description="Each next delay = previous x factor.")
    max_interval_seconds: float = Field(
        30, ge=MIN_POLL_INTERVAL_SECONDS, description="Cap of one delay."
    )
    jitter: float = Field(0.1, ge=0, le=1, description="± fraction of random jitter per delay.")
    task_id_path: str | None = Field(None, description="Dotted path of the job id (auto).")
    status_path: str | None = Field(None, description="Dotted path of the status (auto).")
    success_values: list[str] = Field(default_factory=list, description="Extra success values.")
    failure_values: list[str] = Field(default_factory=list, description="Extra failure values.")
    result_url: str | None = Field(None, description="Template of the result request (auto).")
    output_path: str | None = Field(None, description="Dotted path of the output URL(s) (auto).")
    cancel_url: str | None = Field(None, description="Template of the cancel request (auto).")
    cancel_method: Literal["POST", "PUT", "DELETE", "GET", "PATCH"] = "POST"
    cancel_on_timeout: bool = True
    download: bool | Literal["required"] = Field(
        True, description='false: payload only; "required": a failed download fails the run.'
    )
    download_all: bool = False
    wait: Literal["inline", "suspend", "auto"] = Field(
        "auto",
        description='How a deployment run waits: "inline" holds its process; "suspend" frees '
        'it while the toolflows waiter watches the job; "auto" suspends a job still running '
        "after suspendAfterSeconds when a waiter is alive. Runs not from a deployment wait inline.",
    )
    suspend_after_seconds: float = Field(
        60,
        ge=0,
        description='"auto": how long the run waits inline before it suspends (a job that has '
        "run this long is worth the few seconds a resumed run takes to start again).",
    )

    @property
    def schedule(self) -> PollSchedule:
        """The delays between status checks these settings ask for."""
        return PollSchedule(
            **{item.name: getattr(self, item.name) for item in fields(PollSchedule)}
        )


class WebhookConfig(BaseModel):
    """``adapterConfig.webhook``: where the API takes a callback URL, and how it signs calls.

    A callback only wakes the waiter to check the job now; the status check decides.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    field: str | None = Field(
        None, description="Dotted body field of the callback URL (Replicate: webhook)."
    )
    query: str | None = Field(
        None, description="Query parameter of the callback URL (FAL: fal_webhook)."
    )
    signing: Literal["none", "standard-webhooks", "hmac-sha256"] = Field(
        "none", description="How the provider signs its calls; unsigned calls are refused."
    )
    secret: str | None = Field(
        None, description="Signing secret, usually ${VAR} (Standard Webhooks: whsec_...)."
    )
    signature_header: str = Field(
        "X-Signature", description="hmac-sha256: the header with the hex digest of the body."
    )
    backstop_seconds: float = Field(
        120,
        ge=MIN_POLL_INTERVAL_SECONDS,
        description="Longest delay between the waiter's own checks while callbacks are on.",
    )

    @model_validator(mode="after")
    def _one_place_and_a_secret(self) -> WebhookConfig:
        if (self.field is None) == (self.query is None):
            raise ValueError("give exactly one of field (a body field) or query")
        if self.signing != "none" and not self.secret:
            raise ValueError(f"signing {self.signing!r} needs a secret")
        return self


class AdapterConfig(BaseModel):
    """``adapterConfig``: transport settings of one method."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    headers: dict[str, str] = Field(
        default_factory=dict, description="Headers sent to the endpoint; ${VAR} from env/Secret."
    )
    polling: PollingConfig = Field(default_factory=PollingConfig)
    body_type: Literal["json", "form", "multipart"] = "json"
    timeout: float = Field(30, gt=0, description="Seconds per request (connect: 10).")
    allowed_hosts: list[str] = Field(
        default_factory=list, description="Further hosts that may receive the headers."
    )
    max_download_bytes: int = Field(10 * 1024**3, gt=0)
    # A download that stalls is abandoned and retried (resumed with Range), as curl's
    # --speed-limit / --speed-time do: a dripping server must not hold a run forever.
    download_first_byte_seconds: float = Field(
        60, gt=0, description="Seconds from a download request to the first byte of its body."
    )
    download_min_bytes_per_second: int = Field(
        1024, ge=0, description="Slower than this for downloadStallSeconds: retry (0: no rule)."
    )
    download_stall_seconds: float = Field(
        60, gt=0, description="How long a download may stay below downloadMinBytesPerSecond."
    )
    idempotency_header: str | None = None
    storage: str | None = Field(
        None, description="Storage block for outputs, e.g. s3-bucket/media (default: results)."
    )
    concurrency_limit: str | None = Field(
        None, description="Prefect global concurrency limit: the provider's parallel-job cap."
    )
    rate_limit: str | None = Field(
        None, description="Prefect rate limit (a limit with slot decay) paced before each submit."
    )
    webhook: WebhookConfig | None = Field(
        None, description="Where the API takes a callback URL (toolflows waiter --listen)."
    )


class MethodDefinition(BaseModel):
    """One tool method: endpoint, headers and polling settings, stored as data."""

    model_config = ConfigDict(extra="ignore", validate_assignment=True)

    inventory_key: str = Field(..., min_length=1, description="Tool inventory, e.g. heygen.")
    name: str = Field(..., min_length=1, description="Method name, e.g. create_avatar_video_v2.")
    description: str = ""
    endpoint: str = Field(..., min_length=1, description="Submit URL; may use ${VAR}.")
    http_method: str = "POST"
    request_schema: dict[str, Any] | None = Field(None, description="JSON Schema of params.")
    response_schema: dict[str, Any] | None = None
    adapter_type: str = "http"
    adapter_config: AdapterConfig = Field(default_factory=AdapterConfig)
    enabled: bool = True

    @field_validator("endpoint")
    @classmethod
    def _endpoint_is_http(cls, endpoint: str) -> str:
        check_http_url(endpoint)
        return endpoint

    @field_validator("http_method")
    @classmethod
    def _known_http_method(cls, method: str) -> str:
        if method.upper() not in HTTP_METHODS:
            raise ValueError(f"must be one of {', '.join(HTTP_METHODS)}")
        return method.upper()

    @field_validator("adapter_type")
    @classmethod
    def _http_adapter(cls, adapter_type: str) -> str:
        if adapter_type != "http":
            raise ValueError('only the "http" adapter exists')
        return adapter_type

    @field_validator("request_schema", "response_schema", mode="before")
    @classmethod
    def _schema_from_json_string(cls, schema: Any) -> Any:
        return _json_object_or_none(schema)

    @field_validator("adapter_config", mode="before")
    @classmethod
    def _adapter_config_from_json_string(cls, config: Any) -> Any:
        config = _json_object_or_none(config)
        if config is None:
            return {}
        return _snake_keys(
            config, AdapterConfig, nested={"polling": PollingConfig, "webhook": WebhookConfig}
        )

    @property
    def slug(self) -> str:
        """The block document name: ``<inventoryKey>-<name>`` slugified."""
        return slugify(f"{self.inventory_key}-{self.name}")

    @property
    def qualified_name(self) -> str:
        """``inventoryKey/name``: how results and storage keys name the method."""
        return f"{self.inventory_key}/{self.name}"


def parse_definition(raw: Any) -> MethodDefinition:
    """Validate a definition row (camelCase or snake_case) or raise CONFIG_INVALID."""
    if isinstance(raw, MethodDefinition):
        return raw
    if not isinstance(raw, dict):
        raise ToolflowsError(ErrorCode.CONFIG_INVALID, "a method definition must be a JSON object")
    try:
        return MethodDefinition.model_validate(_snake_keys(raw, MethodDefinition))
    except ValidationError as exc:
        raise config_error_from(exc) from None
    except ValueError as exc:
        raise ToolflowsError(
            ErrorCode.CONFIG_INVALID, f"invalid method definition: {exc}"
        ) from None


def config_error_from(exc: ValidationError) -> ToolflowsError:
    """CONFIG_INVALID naming each bad field as the user wrote it (camelCase)."""
    problems = []
    for error in exc.errors():
        field = ".".join(to_camel(str(part)) for part in error["loc"]) or "definition"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        problems.append(f"{field}: {message}")
    return ToolflowsError(
        ErrorCode.CONFIG_INVALID, "invalid method definition: " + "; ".join(problems)
    )


def check_http_url(url: str) -> None:
    """Raise ValueError unless ``url`` is an absolute http(s) URL (``${VAR}`` allowed)."""
    # Placeholders are resolved at run time; check the shape around them.
    parts = urlsplit(re.sub(r"\$\{\w+\}", "x", url))
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"must be an absolute http(s) URL, got {url!r}")


def slugify(text: str) -> str:
    """Prefect block names: lowercase letters, digits and dashes."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _json_object_or_none(value: Any) -> Any:
    if isinstance(value, str):
        if not value.strip():
            return None
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"is not valid JSON ({exc.msg} at position {exc.pos})") from None
        if not isinstance(value, dict):
            raise ValueError("must be a JSON object")
    return value


def _snake_keys(
    mapping: dict[str, Any],
    model: type[BaseModel],
    nested: dict[str, type[BaseModel]] | None = None,
) -> dict[str, Any]:
    """snake_case the keys of one level of ``model`` (and of the ``nested`` sub-objects).

    Only key names the definition itself defines are converted: header names
    and JSON Schemas below them keep their spelling. A key is read in exactly
    its camelCase or its snake_case spelling; another spelling of a known key
    (``statusURL``) is refused, since taking it as written would silently drop it.
    """
    result: dict[str, Any] = {}
    for key, value in mapping.items():
        snake = to_snake(key) if isinstance(key, str) else key
        if isinstance(key, str) and key not in (snake, to_camel(snake)):
            if snake in model.model_fields:
                raise ValueError(f"{key!r} is not a key: did you mean {to_camel(snake)}?")
            snake = key  # left as written: ignored or refused like any unknown key
        if snake in result:
            raise ValueError(f"{key!r} is given twice (camelCase and snake_case)")
        if nested and snake in nested and isinstance(value, dict):
            value = _snake_keys(value, nested[snake])
        result[snake] = value
    return result
