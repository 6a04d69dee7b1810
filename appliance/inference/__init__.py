"""Inference (voice activity, speech recognition) behind one interface, chosen by the
``inference`` setting: ``local://`` runs the models in this process, ``triton://HOST:PORT`` asks a
Triton server. Both run the same model code from the model repository (see models.py)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from .base import Health, Inference, InferenceError, InferenceUnavailable, Transcript

__all__ = ["Health", "Inference", "InferenceError", "InferenceUnavailable", "Transcript", "open_inference"]


def open_inference(url: str, repository: Path) -> Inference:
    """The inference backend a URL names; ``repository`` is where local:// finds the models."""
    scheme = urlsplit(url).scheme
    if scheme == "local":
        from .local import LocalInference

        return LocalInference(repository)
    if scheme == "triton":
        from .triton import TritonInference

        return TritonInference(url)
    raise ValueError(f"inference URL {url!r}: use local:// or triton://HOST:PORT")
