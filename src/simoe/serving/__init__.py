"""Using a trained run: export a fixed mixture as a plain transformers checkpoint, and generate
answers routed on each prompt."""

from .alpha import AlphaSpec, parse_alpha_spec, resolve_alpha, training_alphas
from .export import Export, export_run
from .generate import generate_one, generate_run
from .requests import Request, encode_request, read_requests

__all__ = [
    "AlphaSpec",
    "Export",
    "Request",
    "encode_request",
    "export_run",
    "generate_one",
    "generate_run",
    "parse_alpha_spec",
    "read_requests",
    "resolve_alpha",
    "training_alphas",
]
