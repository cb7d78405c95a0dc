"""The builder service: Dockerfile to image, with a shared layer cache."""
