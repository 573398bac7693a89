"""Routing-embedding cache: the base model is frozen, so each prompt's routing embedding never
changes. Compute it once (batched, no grad), store it with the run, reuse it every step."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..data import EncodedExample, SIMoECollator
from ..model import SIMoEModel

logger = logging.getLogger(__name__)


def model_fingerprint(model: SIMoEModel) -> str:
    """Identifies the frozen base model: its config, dtype and a sample of its weights."""
    h = hashlib.sha256()
    h.update(model.base_model.config.to_json_string(use_diff=False).encode())
    h.update(str(model.dtype).encode())
    for name, p in model.base_model.named_parameters():
        if "_delta." in name:
            continue
        h.update(name.encode())
        flat = p.detach().flatten()
        h.update(flat[:: max(1, flat.numel() // 256)][:256].float().cpu().numpy().tobytes())
    return h.hexdigest()


def prompts_fingerprint(encoded: Sequence[EncodedExample]) -> str:
    """Identifies the routed prompts: the tokens up to each routing index (so data, tokenizer
    and max source length all change it)."""
    h = hashlib.sha256()
    for ex in encoded:
        h.update(torch.tensor(ex.input_ids[: ex.routing_index + 1], dtype=torch.int64)
                 .numpy().tobytes())
        h.update(b"|")
    return h.hexdigest()


@torch.no_grad()
def compute_routing_embeddings(model: SIMoEModel, tokenizer, encoded: Sequence[EncodedExample],
                               batch_size: int = 32) -> torch.Tensor:
    """[N, H] fp32 routing embeddings of the prompts, batched with left padding, longest first."""
    collate = SIMoECollator(tokenizer, padding_side="left")
    order = sorted(range(len(encoded)), key=lambda i: -(encoded[i].routing_index + 1))
    out = torch.empty(len(encoded), model.base_model.config.get_text_config().hidden_size)
    for start in tqdm(range(0, len(order), batch_size), desc="routing cache", unit="batch"):
        idx = order[start:start + batch_size]
        prompts = [{"input_ids": encoded[i].input_ids[: encoded[i].routing_index + 1],
                    "routing_index": encoded[i].routing_index} for i in idx]
        batch = collate(prompts)
        emb = model.routing_embedding(batch["input_ids"].to(model.device),
                                      batch["attention_mask"].to(model.device),
                                      batch["routing_index"].to(model.device))
        out[idx] = emb.float().cpu()
    return out


def load_or_compute(model: SIMoEModel, tokenizer, encoded: Sequence[EncodedExample],
                    cache_dir: str | os.PathLike, batch_size: int = 32) -> torch.Tensor:
    """The cached embeddings for this (model, prompts) key, computed and stored if absent."""
    key = hashlib.sha256((model_fingerprint(model) + prompts_fingerprint(encoded)).encode())
    cache_dir = Path(cache_dir)
    path = cache_dir / f"routing-{key.hexdigest()[:24]}.safetensors"
    if path.is_file():
        emb = load_file(path)["embeddings"]
        if emb.shape[0] == len(encoded):
            logger.info("routing cache hit: %s", path)
            return emb
    emb = compute_routing_embeddings(model, tokenizer, encoded, batch_size)
    cache_dir.mkdir(parents=True, exist_ok=True)
    for stale in cache_dir.glob("routing-*.safetensors"):
        stale.unlink()
    with tempfile.NamedTemporaryFile(dir=cache_dir, suffix=".tmp", delete=False) as tmp:
        tmp_path = Path(tmp.name)
    save_file({"embeddings": emb.contiguous()}, str(tmp_path))
    os.replace(tmp_path, path)
    return emb
