"""URL templates (``{id}``, ``{data.file_id}``, ``{params.X}``) and ``${NAME}`` placeholders.

Two syntaxes live side by side in a definition: ``${NAME}`` is configuration,
resolved once from the environment or a Secret before anything is sent, and
``{field}`` is filled per request from the job. They must never be confused:
a ``${X}`` read as ``{X}`` would leak a lookup into the payload, or worse.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urljoin

from toolflows.core.errors import ErrorCode, ToolflowsError
from toolflows.core.paths import get_path
from toolflows.core.redact import redact_url

_TEMPLATE_FIELD = re.compile(r"(?<!\$)\{([\w.\-]+)\}")
_ENV_PLACEHOLDER = re.compile(r"\$\{(\w+)\}", re.ASCII)
_PARAMS_PREFIX = "params."


def render_template(
    template: str,
    *,
    task_id: str | None,
    payload: Any = None,
    params: Mapping[str, Any] | None = None,
) -> str:
    """Fill every ``{field}`` of ``template`` for one request.

    ``{id}`` is the job id, ``{params.X}`` a (dotted) param, anything else a
    dotted path of the latest ``payload``. Values are percent-encoded except
    ``/``, because operation-style ids are paths
    (``projects/p/operations/1``). A field without a value is
    ``CONFIG_INVALID``: sending a request to a half-filled URL would only
    fail later, less clearly.
    """

    def fill_field(match: re.Match[str]) -> str:
        field = match.group(1)
        if field == "id":
            value: Any = task_id
        elif field.startswith(_PARAMS_PREFIX):
            value = get_path(params, field.removeprefix(_PARAMS_PREFIX))
        else:
            value = get_path(payload, field)
        text = _url_text(value)
        if text is None:
            raise ToolflowsError(
                ErrorCode.CONFIG_INVALID,
                f"no value for {{{field}}} in template {redact_url(template)!r}",
                task_id=task_id,
            )
        return quote(text, safe="/")

    return _TEMPLATE_FIELD.sub(fill_field, template)


def template_fields(template: str) -> list[str]:
    """The ``{field}`` placeholders of ``template``, each once, in order (not ``${NAME}``)."""
    return list(dict.fromkeys(_TEMPLATE_FIELD.findall(template)))


def env_placeholders(text: str) -> list[str]:
    """The names of the ``${NAME}`` placeholders in ``text``, each once, in order."""
    return list(dict.fromkeys(_ENV_PLACEHOLDER.findall(text)))


def substitute_env(text: str, values: Mapping[str, str]) -> str:
    """Replace every ``${NAME}`` in ``text`` with ``values[NAME]``.

    All missing names are reported at once, so a user fixes the setup in one
    go; the message names variables only, never a value. Substituted values
    are not scanned again, so a secret that happens to contain ``${`` stays
    as it is.
    """
    missing = [name for name in env_placeholders(text) if name not in values]
    if missing:
        listed = ", ".join(f"${{{name}}}" for name in missing)
        raise ToolflowsError(
            ErrorCode.CONFIG_INVALID,
            f"no value for {listed}: set the environment variable or a Prefect Secret block",
        )
    return _ENV_PLACEHOLDER.sub(lambda match: values[match.group(1)], text)


def resolve_link(base_url: str, link: str) -> str:
    """Resolve ``link`` against ``base_url`` as a browser does.

    ``/v1/x`` starts from the origin, ``x`` sits beside the endpoint's last
    segment, ``//host/x`` keeps the scheme, and an absolute URL is unchanged.
    A link that is no URL at all (``http://[::1``) is returned as it is: the
    request to it is refused, with the reason, where every URL is checked.
    """
    try:
        return urljoin(base_url, link.strip())
    except ValueError:
        return link.strip()


def _url_text(value: Any) -> str | None:
    """A JSON scalar as URL text, or None when it cannot fill a placeholder."""
    if isinstance(value, bool):  # before int: JSON spells them in lowercase
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str) and value:
        return value
    return None
