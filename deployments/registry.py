"""Saving method definitions as ``ToolMethod`` blocks, finding them, and the presets."""

from __future__ import annotations

from pathlib import Path

from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound

from toolflows.blocks import ToolMethod
from toolflows.core.definition import MethodDefinition, parse_definition
from toolflows.core.errors import ToolflowsError
from toolflows.methods import read_definition_file

PRESETS_DIR = Path(__file__).parent / "presets"


def preset_files() -> list[Path]:
    """The provider presets shipped with toolflows (HeyGen, FAL, Runway, Replicate)."""
    return sorted(PRESETS_DIR.glob("*.json"))


def load_preset(inventory_key: str, name: str) -> MethodDefinition:
    """One preset definition, e.g. ``load_preset("heygen", "create_avatar_video_v2")``."""
    for file in preset_files():
        for definition in read_definition_file(file):
            if (definition.inventory_key, definition.name) == (inventory_key, name):
                return definition
    raise KeyError(f"no preset {inventory_key}/{name}")


async def register_definitions(definitions: list[MethodDefinition]) -> list[dict[str, str]]:
    """Save each definition as a block named ``<inventoryKey>-<name>`` (overwriting)."""
    saved = []
    for definition in definitions:
        block = ToolMethod.model_validate(definition.model_dump())
        await block.asave(definition.slug, overwrite=True)
        saved.append({"block": definition.slug, "method": definition.qualified_name})
    return saved


async def saved_methods() -> dict[str, MethodDefinition]:
    """Every saved ToolMethod block, by block name (enabled or not)."""
    async with get_client() as client:
        try:
            # This endpoint answers every document at once (it has no paging).
            documents = await client.read_block_documents_by_type(ToolMethod.get_block_type_slug())
        except ObjectNotFound:  # the block type itself is not registered yet
            return {}
    methods = {}
    for document in documents:
        if document.is_anonymous or not document.name:
            continue
        try:
            methods[document.name] = parse_definition(document.data)
        except ToolflowsError as error:
            raise ToolflowsError(error.code, f"block {document.name!r}: {error.message}") from None
    return dict(sorted(methods.items()))
