"""The embedded SYNTHETIC sample in MovieLens-1M format (made by `scripts/make_sample.py`, not real data)."""

from importlib import resources


def sample_dir() -> str:
    return str(resources.files(__name__))
