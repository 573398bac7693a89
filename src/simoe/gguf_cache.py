"""The GGUF cache: a GGUF file dequantised once (transformers' ``gguf_file=`` support, needs the
``gguf`` package) into a plain fp32 safetensors checkpoint plus tokenizer under
``<cache root>/gguf/<first 16 hex of the file's sha256>/``, built in a temporary sibling and
renamed into place (a killed process never leaves a half entry that later loads). See
:mod:`simoe.loading` for the cache root and how references are resolved.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import time
from functools import lru_cache
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

CACHE_ENV = "SIMOE_CACHE"
SOURCE_NAME = "simoe_gguf_source.json"
GGUF_MIN_VERSION = "0.10"
GGUF_HINT = "loading a GGUF file needs the 'gguf' package: pip install 'simoe[gguf]'"
_STALE_TMP_S = 3600.0


class ModelLoadError(ValueError):
    """A base model or tokenizer reference that cannot be loaded; the message says why."""


class MissingGGUFError(ModelLoadError, ImportError):
    """The optional ``gguf`` package (``simoe[gguf]``) is needed to read a GGUF file."""


@lru_cache(maxsize=64)
def _sha256_cached(path: str, size: int, mtime_ns: int, inode: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _sha256(path: Path) -> str:
    """sha256 of the whole file, memoised per (path, size, mtime, inode)."""
    st = path.stat()
    return _sha256_cached(str(path), st.st_size, st.st_mtime_ns, st.st_ino)


def _require_gguf() -> None:
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise MissingGGUFError(GGUF_HINT) from None
    from importlib.metadata import PackageNotFoundError, version

    try:
        have = version("gguf")
    except PackageNotFoundError:
        return
    parts = tuple(int(x) for x in re.findall(r"\d+", have)[:2])
    if parts < tuple(int(x) for x in GGUF_MIN_VERSION.split(".")):
        raise MissingGGUFError(f"{GGUF_HINT} (gguf {have} is older than {GGUF_MIN_VERSION})")


# ---------------------------------------------------------------------- GGUF cache
def gguf_cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir``, else ``$SIMOE_CACHE``, else ``$XDG_CACHE_HOME/simoe``, ``~/.cache/simoe``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "simoe"


def gguf_cache_entry(gguf_file: str | os.PathLike,
                     cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the dequantised checkpoint of ``gguf_file`` lives (it may not exist yet)."""
    return gguf_cache_root(cache_dir) / "gguf" / _sha256(Path(gguf_file).resolve())[:16]


def _entry_complete(entry: Path, sha: str) -> bool:
    try:
        meta = json.loads((entry / SOURCE_NAME).read_text())
    except (OSError, ValueError):
        return False
    return (meta.get("sha256") == sha and (entry / "config.json").is_file()
            and (entry / "model.safetensors").is_file())


def _drop_stale_tmp(parent: Path) -> None:
    now = time.time()
    for tmp in parent.glob(".tmp-*"):
        try:
            if now - tmp.stat().st_mtime > _STALE_TMP_S:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            pass


def _plain_copy(quantized: torch.nn.Module) -> torch.nn.Module:
    """A plain model equal to the GGUF-loaded one (which refuses save_pretrained)."""
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(quantized.config)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict(), assign=True, strict=True)
    for name, buf in quantized.named_buffers():  # non-persistent buffers (rotary inv_freq, ...)
        owner_name, _, leaf = name.rpartition(".")
        owner = plain.get_submodule(owner_name)
        owner.register_buffer(leaf, buf, persistent=leaf not in owner._non_persistent_buffers_set)
    plain.tie_weights()
    left = [n for n, t in [*plain.named_parameters(), *plain.named_buffers()] if t.is_meta]
    if left:
        raise ModelLoadError(f"GGUF conversion left tensors uninitialised: {left[:5]}")
    plain.generation_config = copy.deepcopy(quantized.generation_config)
    return plain.eval()


def _probe_ids(vocab_size: int) -> torch.Tensor:
    return (torch.arange(24).mul(7919).add(3) % vocab_size).unsqueeze(0)


def _build_gguf_entry(gguf_file: Path, entry: Path, sha: str) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _require_gguf()
    entry.parent.mkdir(parents=True, exist_ok=True)
    _drop_stale_tmp(entry.parent)
    # os.mkdir honours the umask (mkdtemp's 0700 would hide a shared cache from other users).
    tmp = entry.parent / f".tmp-{entry.name}-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        start = time.perf_counter()
        logger.info("dequantising %s into %s (once)", gguf_file, entry)
        kw = {"gguf_file": gguf_file.name}
        try:
            tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, **kw)
            quantized = AutoModelForCausalLM.from_pretrained(
                gguf_file.parent, dtype=torch.float32, **kw).eval()
        except MemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - gguf/transformers raise many types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise ModelLoadError(
                f"cannot load GGUF file {gguf_file}: {type(exc).__name__}: {first}") from exc
        plain = _plain_copy(quantized)
        plain.save_pretrained(tmp, safe_serialization=True, max_shard_size="1000GB")
        tokenizer.save_pretrained(tmp)
        probe = "Hello world! <|im_start|>user\n2+2=?<|im_end|>\n\tunicode \u00fc\u65e5\u672c"
        if AutoTokenizer.from_pretrained(tmp)(probe).input_ids != tokenizer(probe).input_ids:
            raise ModelLoadError(
                f"the saved tokenizer of {gguf_file} does not encode like the GGUF one; not cached")
        # The artefact itself must reproduce the GGUF-loaded model exactly.
        reloaded = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32).eval()
        ids = _probe_ids(quantized.config.get_text_config().vocab_size)
        with torch.no_grad():
            same = torch.equal(quantized(ids).logits, reloaded(ids).logits)
        if not same:
            raise ModelLoadError(
                f"the dequantised copy of {gguf_file} does not reproduce its logits; not cached")
        del quantized, plain, reloaded
        (tmp / SOURCE_NAME).write_text(json.dumps({
            "gguf_file": str(gguf_file), "sha256": sha, "size": gguf_file.stat().st_size,
            "dtype": "float32", "seconds": round(time.perf_counter() - start, 2),
            "transformers_version": _version("transformers"), "gguf_version": _version("gguf"),
        }, indent=2) + "\n")
        try:
            os.rename(tmp, entry)
        except OSError:
            if not _entry_complete(entry, sha):
                raise
            logger.info("another process cached %s first; using its copy", gguf_file)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def ensure_gguf_cache(gguf_file: str | os.PathLike,
                      cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache entry (config.json, model.safetensors, tokenizer) of ``gguf_file``, built once.

    The first call dequantises (about 15-25 s and 1.3 GiB for a 135M model); later calls only
    hash the file. A broken or foreign entry is rebuilt.
    """
    gguf_file = Path(gguf_file).expanduser().resolve()
    if not gguf_file.is_file():
        raise ModelLoadError(f"model path {gguf_file} does not exist")
    sha = _sha256(gguf_file)
    entry = gguf_cache_root(cache_dir) / "gguf" / sha[:16]
    if _entry_complete(entry, sha):
        return entry
    if entry.exists():  # half-deleted by hand, or a hash-prefix collision: set it aside
        logger.warning("rebuilding incomplete GGUF cache entry %s", entry)
        aside = entry.with_name(f".tmp-broken-{entry.name}-{os.getpid()}")
        try:
            os.rename(entry, aside)
            shutil.rmtree(aside, ignore_errors=True)
        except OSError:
            pass
    _build_gguf_entry(gguf_file, entry, sha)
    return entry
