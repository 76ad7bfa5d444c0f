"""Media pipelines composed from tool methods (each step a method run as a job)."""

from toolflows.pipelines.chain import continue_with_file
from toolflows.pipelines.image_to_video import image_to_video_pipeline

__all__ = ["continue_with_file", "image_to_video_pipeline"]
