"""Media pipelines composed from tool methods (each step a method run as a job)."""

from flows.pipelines.image_to_video import image_to_video_pipeline

__all__ = ["image_to_video_pipeline"]
