"""The image → video (+ narration) pipeline against the fake providers."""

from __future__ import annotations

import pytest
from prefect.utilities.asyncutils import run_coro_as_sync

from tests.helpers import fake_method
from toolflows.core.errors import ErrorCode, ToolflowsError
from toolflows.pipelines import image_to_video_pipeline
from toolflows.pipelines.steps import fill_params_template

pytestmark = pytest.mark.usefixtures("prefect_api")

RUNWAY_PARAMS = {
    "model": "gen4_turbo",
    "promptImage": "{image_url}",
    "promptText": "{prompt}",
    "ratio": "1280:720",
}
HEYGEN_PARAMS = {
    "video_inputs": [
        {
            "character": {"type": "avatar", "avatar_id": "Daisy-inskirt-20220818"},
            "voice": {"type": "text", "input_text": "{prompt}", "voice_id": "v1"},
        }
    ]
}


def pipeline(fake, prompts, *, narration=True, video_params=RUNWAY_PARAMS):
    return run_coro_as_sync(
        image_to_video_pipeline(
            prompts,
            image_method=fake_method(fake, "fal_image").model_dump(),
            video_method=fake_method(fake, "runway").model_dump(),
            video_params=video_params,
            narration_method=fake_method(fake, "heygen").model_dump() if narration else None,
            narration_params=HEYGEN_PARAMS,
        )
    )


def test_each_prompt_becomes_an_image_a_video_and_a_narration(fresh_fake):
    fresh_fake.script("fal", kind="image")
    prompts = ["a cat surfing", "a dog skiing"]

    result = pipeline(fresh_fake, prompts)

    assert [item.prompt for item in result.items] == prompts
    runway_jobs = {job.id: job for job in fresh_fake.jobs("runway")}
    heygen_jobs = {job.id: job for job in fresh_fake.jobs("heygen")}
    for item in result.items:
        assert item.image.files[0].mimetype == "image/png"
        assert item.video.files[0].mimetype == "video/mp4"
        # The video step was given the image provider's URL of this prompt's picture.
        video_input = runway_jobs[item.video.task_id].input
        assert video_input["promptImage"] == item.image.data["images"][0]["url"]
        assert video_input["promptText"] == item.prompt
        spoken = heygen_jobs[item.narration.task_id].input["video_inputs"][0]["voice"]
        assert spoken["input_text"] == item.prompt
    assert fresh_fake.submits("fal") == fresh_fake.submits("runway") == 2


def test_a_failing_step_fails_the_pipeline_naming_the_step(fresh_fake):
    fresh_fake.script("fal", kind="image")
    fresh_fake.script("runway", outcome="failure")

    with pytest.raises(ToolflowsError) as raised:
        pipeline(fresh_fake, ["a cat surfing"], narration=False)

    assert raised.value.code is ErrorCode.TASK_FAILED
    assert "pipeline step 'video'" in raised.value.message
    assert "An unexpected error occurred." in raised.value.message


def test_a_bad_template_fails_before_any_submit(fresh_fake):
    with pytest.raises(ToolflowsError) as raised:
        pipeline(fresh_fake, ["a cat"], video_params={**RUNWAY_PARAMS, "seed": "{sed}"})

    assert raised.value.code is ErrorCode.CONFIG_INVALID
    assert "sed" in raised.value.message
    assert fresh_fake.submits() == 0


def test_fill_keeps_types_for_whole_placeholders_and_formats_the_rest():
    values = {"prompt": "a cat", "count": 3, "urls": ["u1"]}
    template = {"n": "{count}", "text": "draw {prompt}", "list": ["{urls}", 5]}

    assert fill_params_template(template, values) == {
        "n": 3,
        "text": "draw a cat",
        "list": [["u1"], 5],
    }


def test_a_pipeline_that_times_out_cancels_its_running_jobs(fresh_fake):
    fresh_fake.script("fal", kind="image")
    fresh_fake.script("runway", polls_until_done=10_000)
    fresh_fake.script("heygen", polls_until_done=10_000)
    # Long enough for both video jobs to be submitted on a loaded machine; they never end.
    timed = image_to_video_pipeline.with_options(timeout_seconds=8)
    narration = fake_method(fresh_fake, "heygen", max_wait_seconds=60)

    with pytest.raises((ToolflowsError, TimeoutError)):
        run_coro_as_sync(
            timed(
                ["a cat surfing", "a dog skiing"],
                image_method=fake_method(fresh_fake, "fal_image").model_dump(),
                video_method=fake_method(fresh_fake, "runway", max_wait_seconds=60).model_dump(),
                video_params=RUNWAY_PARAMS,
                narration_method=narration.model_dump(),
                narration_params=HEYGEN_PARAMS,
            )
        )

    # The video jobs still running when the run timed out were cancelled at the provider.
    # (The HeyGen preset has no cancel endpoint: its jobs are left, with a warning.)
    jobs = sorted(job.id for job in fresh_fake.jobs("runway"))
    assert len(jobs) == 2
    assert sorted(fresh_fake.cancels("runway")) == jobs
