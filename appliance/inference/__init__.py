"""Inference (voice activity, speech recognition) behind one interface, chosen by the
``inference`` setting: ``local://`` runs the models in this process, ``triton://HOST:PORT`` asks a
Triton server, ``triton://HOST1:PORT,HOST2:PORT,...`` a pool of them (pool.py). All run the same
model code from the model repository (see models.py)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from ..settings import triton_addresses
from .base import Health, Inference, InferenceError, InferenceUnavailable, Transcript

__all__ = ["Health", "Inference", "InferenceError", "InferenceUnavailable", "Transcript", "open_inference"]


def open_inference(url: str, repository: Path) -> Inference:
    """The inference backend a URL names; ``repository`` is where local:// finds the models."""
    scheme = urlsplit(url).scheme
    if scheme == "local":
        from .local import LocalInference

        return LocalInference(repository)
    if scheme == "triton":
        try:
            servers = triton_addresses(url)
        except ValueError as exc:
            raise ValueError(f"inference URL {url!r}: {exc}") from None
        if len(servers) > 1:
            from .pool import TritonPool

            return TritonPool(url)
        from .triton import TritonInference

        return TritonInference(url)
    raise ValueError(f"inference URL {url!r}: use local://, triton://HOST:PORT or triton://HOST1:PORT,HOST2:PORT")
