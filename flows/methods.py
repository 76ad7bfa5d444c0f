"""Finding a method and making it ready to run, before anything is sent.

A method is named by a block name, ``inventoryKey/name`` or a definition file,
or given inline. ``prepare_method`` checks everything a run needs (enabled,
params valid against ``requestSchema``, every ``${VAR}`` resolvable) so that a
wrong config fails with ``CONFIG_INVALID`` before the paid submit.

Prefect is imported only where a block must be read (a method or a Secret by
name): importing it takes seconds, and the CLI checks a definition file whose
``${VAR}`` are set before any of that, so a wrong config fails at once.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from toolflows.core.definition import MethodDefinition, parse_definition, slugify
from toolflows.core.errors import ErrorCode, ToolflowsError
from toolflows.core.redact import Redactor
from toolflows.core.templates import env_placeholders, substitute_env
from toolflows.http import ProviderSession, provider_session

DEFINITION_SUFFIXES = (".json", ".yaml", ".yml")


@dataclass(frozen=True)
class PreparedMethod:
    """A definition with its ``${VAR}`` placeholders resolved, ready to send.

    Holds secrets: never persist, log or pass it as a task parameter.
    """

    definition: MethodDefinition
    placeholder_values: dict[str, str]
    headers: dict[str, str]
    redact: Redactor

    @property
    def endpoint(self) -> str:
        """The submit URL with its ``${VAR}`` placeholders filled."""
        return substitute_env(self.definition.endpoint, self.placeholder_values)


def session_for(
    prepared: PreparedMethod, *, bind: bool = True
) -> AbstractAsyncContextManager[ProviderSession]:
    """The run's provider session, configured from the method (``bind``: see
    ``provider_session``)."""
    config = prepared.definition.adapter_config
    return provider_session(
        prepared.endpoint,
        prepared.headers,
        timeout=config.timeout,
        redact=prepared.redact,
        allowed_hosts=tuple(config.allowed_hosts),
        placeholder_values=prepared.placeholder_values,
        bind=bind,
    )


def read_definition_file(path: str | os.PathLike[str]) -> list[MethodDefinition]:
    """Every definition in a .json/.yaml file (one object or a list)."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
        loaded = json.loads(text) if file.suffix == ".json" else yaml.safe_load(text)
    except OSError as exc:
        raise ToolflowsError(ErrorCode.CONFIG_INVALID, f"cannot read {file}: {exc}") from exc
    except (ValueError, yaml.YAMLError) as exc:
        raise ToolflowsError(ErrorCode.CONFIG_INVALID, f"{file} is not valid: {exc}") from exc
    rows = loaded if isinstance(loaded, list) else [loaded]
    definitions = []
    for index, row in enumerate(rows):
        try:
            definitions.append(parse_definition(row))
        except ToolflowsError as exc:
            where = f"{file}" if len(rows) == 1 else f"{file}[{index}]"
            raise ToolflowsError(ErrorCode.CONFIG_INVALID, f"{where}: {exc.message}") from None
    return definitions


def is_definition_file(reference: str) -> bool:
    return reference.endswith(DEFINITION_SUFFIXES) or os.path.isfile(reference)


def block_name_for(reference: str) -> str:
    """``inventoryKey/name`` → the block's slug; a block name stays as it is."""
    return slugify(reference.replace("/", "-")) if "/" in reference else reference


async def load_method(method: str | dict[str, Any] | MethodDefinition) -> MethodDefinition:
    """The definition named by a block name, ``inventoryKey/name``, a file, or given inline."""
    if not isinstance(method, str):
        return parse_definition(method)
    if is_definition_file(method):
        definitions = read_definition_file(method)
        if len(definitions) != 1:
            raise ToolflowsError(
                ErrorCode.CONFIG_INVALID,
                f"{method} holds {len(definitions)} definitions; register them and run one by name",
            )
        return definitions[0]
    from toolflows.blocks import ToolMethod

    name = block_name_for(method)
    try:
        block = await ToolMethod.aload(name)
    except ValueError:
        raise ToolflowsError(
            ErrorCode.CONFIG_INVALID,
            f"no tool method named {method!r} (looked for the ToolMethod block {name!r}; "
            "save one with `toolflows register FILE`)",
        ) from None
    return block.definition()


async def prepare_method(
    definition: MethodDefinition, params: dict[str, Any] | None, *, submitting: bool = True
) -> PreparedMethod:
    """Check the method can run with these params and resolve its placeholders.

    Params are checked against ``requestSchema`` only when they will be sent
    (``--resume`` sends none).
    """
    if not definition.enabled:
        raise ToolflowsError(
            ErrorCode.CONFIG_INVALID, f"method {definition.qualified_name} is disabled"
        )
    if submitting:
        validate_params(definition, params)
    values = await _resolve_placeholders(definition)
    headers = {
        name: substitute_env(value, values)
        for name, value in definition.adapter_config.headers.items()
    }
    return PreparedMethod(
        definition=definition,
        placeholder_values=values,
        headers=headers,
        redact=Redactor([*values.values(), *headers.values()]),
    )


def validate_params(definition: MethodDefinition, params: dict[str, Any] | None) -> None:
    """Params against ``requestSchema``: invalid params are never sent."""
    params_checker(definition)(params)


def params_checker(definition: MethodDefinition) -> Callable[[dict[str, Any] | None], None]:
    """The check of ``validate_params``, built once for the many params sets of a batch."""
    schema = definition.request_schema
    validator = None
    if schema:
        try:
            validator_class = jsonschema.validators.validator_for(schema)
            validator_class.check_schema(schema)
        except jsonschema.SchemaError as exc:
            raise ToolflowsError(
                ErrorCode.CONFIG_INVALID, f"requestSchema is not a valid JSON Schema: {exc.message}"
            ) from None
        validator = validator_class(schema)

    def check(params: dict[str, Any] | None) -> None:
        if params is not None and not isinstance(params, dict):
            raise ToolflowsError(ErrorCode.CONFIG_INVALID, "params must be a JSON object")
        if validator is None:
            return
        errors = sorted(validator.iter_errors(params or {}), key=lambda error: list(error.path))
        if errors:
            problems = "; ".join(
                f"{'.'.join(str(part) for part in error.path) or 'params'}: {error.message}"
                for error in errors[:5]
            )
            raise ToolflowsError(ErrorCode.CONFIG_INVALID, f"invalid params: {problems}")

    return check


def _placeholder_names(definition: MethodDefinition) -> set[str]:
    polling = definition.adapter_config.polling
    texts = [definition.endpoint, *definition.adapter_config.headers.values()]
    texts += [url for url in (polling.status_url, polling.result_url, polling.cancel_url) if url]
    webhook = definition.adapter_config.webhook
    if webhook and webhook.secret:
        texts.append(webhook.secret)
    return {name for text in texts for name in env_placeholders(text)}


async def _resolve_placeholders(definition: MethodDefinition) -> dict[str, str]:
    """``${NAME}``: the environment variable, else the Secret block ``name`` slugified."""
    values: dict[str, str] = {}
    for name in sorted(_placeholder_names(definition)):
        if name in os.environ:
            values[name] = os.environ[name]
            continue
        from prefect.blocks.system import Secret

        try:
            secret = await Secret.aload(slugify(name))
        except ValueError:
            raise ToolflowsError(
                ErrorCode.CONFIG_INVALID,
                f"${{{name}}} is not set: define the environment variable {name} "
                f"or a Secret block named {slugify(name)!r}",
            ) from None
        values[name] = str(secret.get())
    return values
