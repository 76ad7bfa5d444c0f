"""Image generation → image-to-video, with optional avatar narration beside it.

For each prompt: an image method makes a picture, whose URL becomes the input
of a video method; the narration (an avatar reading the prompt) does not need
either, so it runs at the same time. All prompts run concurrently. Every
method and every params template is checked before the first submit.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import Any

from prefect import flow
from prefect.logging import get_run_logger
from pydantic import Field

from toolflows.cancel import cancel_remote_jobs
from toolflows.models import CamelModel, ToolResult
from toolflows.pipelines.steps import Step
from toolflows.together import all_settled, raise_first_error

SAMPLE_IMAGE_URL = "https://example.com/sample.png"


class PipelineItem(CamelModel):
    """What one prompt produced."""

    prompt: str
    image: ToolResult
    video: ToolResult
    narration: ToolResult | None = None


class PipelineResult(CamelModel):
    items: list[PipelineItem] = Field(default_factory=list)


@flow(
    name="image_to_video_pipeline",
    description="Prompts → images → videos (plus optional avatar narration), concurrently.",
    on_cancellation=[cancel_remote_jobs("image_method", "video_method", "narration_method")],
    persist_result=True,
)
async def image_to_video_pipeline(
    prompts: list[str],
    image_method: str | dict[str, Any] = "fal/flux_dev_image",
    video_method: str | dict[str, Any] = "fal/kling_image_to_video",
    image_params: dict[str, Any] | None = None,
    video_params: dict[str, Any] | None = None,
    narration_method: str | dict[str, Any] | None = None,
    narration_params: dict[str, Any] | None = None,
) -> PipelineResult:
    """Run the pipeline; the first failing step fails the run, naming step and prompt.

    Params templates take ``{prompt}`` and, for the video step, ``{image_url}``
    (the image provider's URL of the picture), e.g. Runway's
    ``{"model": "gen4_turbo", "promptImage": "{image_url}", "promptText": "{prompt}",
    "ratio": "1280:720"}``.
    """
    image = Step("image", image_method, image_params or {"prompt": "{prompt}"})
    video = Step(
        "video", video_method, video_params or {"prompt": "{prompt}", "image_url": "{image_url}"}
    )
    narration = (
        Step("narration", narration_method, narration_params or {"input_text": "{prompt}"})
        if narration_method
        else None
    )
    async with AsyncExitStack() as sessions:
        sample = {"prompt": prompts[0] if prompts else "", "image_url": SAMPLE_IMAGE_URL}
        for step in (image, video, narration):
            if step is not None:
                await step.open(sessions, sample)

        async def one(index: int, prompt: str) -> PipelineItem:
            values = {"prompt": prompt}

            async def picture_then_video() -> tuple[ToolResult, ToolResult]:
                picture = await image.run(values, f"{index}")
                handed_on = {**values, "image_url": image.handoff_url(picture)}
                clip = await video.run(handed_on, f"{index}")
                return picture, clip

            if narration is None:
                picture, clip = await picture_then_video()
                return PipelineItem(prompt=prompt, image=picture, video=clip)
            both = await all_settled(picture_then_video(), narration.run(values, f"{index}"))
            (picture, clip), spoken = raise_first_error(both)
            return PipelineItem(prompt=prompt, image=picture, video=clip, narration=spoken)

        outcomes = await all_settled(*(one(index, prompt) for index, prompt in enumerate(prompts)))
    failures = [outcome for outcome in outcomes if isinstance(outcome, Exception)]
    if failures:
        logger = get_run_logger()
        for failure in failures[1:]:
            logger.error("Also failed: %s", failure)
        raise failures[0]
    return PipelineResult(
        items=[outcome for outcome in outcomes if isinstance(outcome, PipelineItem)]
    )
