"""The Dockerfile frontend: BuildKit's grammar, docker's semantics, no filesystem."""

from services.builder.frontend.dispatch import dispatch_stage
from services.builder.frontend.graph import BuildArgs, needed_stages, stage_base, target_stage
from services.builder.frontend.imagestate import ImageState
from services.builder.frontend.parser import parse

__all__ = ["BuildArgs", "ImageState", "dispatch_stage", "needed_stages", "parse", "stage_base", "target_stage"]
