"""Utilities mirroring ``ray.util``."""
