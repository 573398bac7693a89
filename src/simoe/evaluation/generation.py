"""Batched greedy generation for evaluation: left padding, per-example routing for SIMoE,
stop at EOS. Works for a SIMoE run directory and for any transformers causal LM."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..config import CONFIG_NAME, SIMoEConfig
from ..data import EncodedExample, SIMoECollator
from ..loading import (
    ModelLoadError,
    fingerprint,
    fingerprints_match,
    load_base_model,
    load_tokenizer,
)
from ..model import SIMoEModel

# Files of a run directory (or, for a checkpoint-N, of its run) that record the base model.
_RECORDS = ("final_stats.json", "job.json")


@dataclass
class LoadedModel:
    """A model ready for generation, its tokenizer and what it is."""

    model: torch.nn.Module
    tokenizer: Any
    kind: str  # "simoe" or "transformers"
    task_ids: dict[str, int] | None = None


def recorded_base_fingerprint(run: Path) -> dict[str, Any] | None:
    """The fingerprint of the base model a run was trained on, if the run records one."""
    for directory in (run, run.parent):
        for name in _RECORDS:
            file = directory / name
            if file.is_file():
                try:
                    found = json.loads(file.read_text()).get("base_fingerprint")
                except (ValueError, AttributeError):
                    continue
                if found:
                    return found
    return None


def _load_simoe_base(run: Path, base_model: str | None, dtype: torch.dtype
                     ) -> tuple[torch.nn.Module, str]:
    """The base model of a SIMoE run: ``base_model`` or the one it records, checked against
    the fingerprint the run recorded."""
    config = SIMoEConfig.load(run)
    ref = base_model or config.base_model_name_or_path
    if not ref:
        raise ValueError(f"{run}: the checkpoint names no base model; pass --base-model")
    hint = "" if base_model else \
        f" (the base model recorded by {run}; if it moved, pass --base-model)"
    recorded = recorded_base_fingerprint(run)
    try:
        current = fingerprint(ref) if recorded else None
    except ModelLoadError as err:
        raise ModelLoadError(f"{err}{hint}") from None
    if recorded and current and not fingerprints_match(recorded, current):
        where = recorded.get("path") or recorded.get("name")
        raise ModelLoadError(f"base model {ref} is not the one {run} was trained on ({where}: "
                             "its files differ); pass the original base with --base-model")
    try:
        return load_base_model(ref, dtype=dtype), ref
    except ModelLoadError as err:
        raise ModelLoadError(f"{err}{hint}") from None


def load_for_eval(source: str, dtype: torch.dtype = torch.float32,
                  device: str | torch.device | None = None,
                  base_model: str | None = None) -> LoadedModel:
    """A SIMoE run directory (simoe_config.json) or a transformers model (path or hub id).
    ``base_model`` points a SIMoE run at its base model when that has moved."""
    path = Path(source)
    if path.is_dir() and (path / CONFIG_NAME).is_file():
        base, base_ref = _load_simoe_base(path, base_model, dtype)
        model = SIMoEModel.from_pretrained(path, base_model=base)
        tok_src = path if (path / "tokenizer_config.json").is_file() else base_ref
        task_file = path / "task_ids.json"
        task_ids = json.loads(task_file.read_text()) if task_file.is_file() else None
        kind = "simoe"
    elif path.is_dir() and not (path / "config.json").is_file():
        raise ValueError(f"{source} is neither a SIMoE run directory (no {CONFIG_NAME}) nor a "
                         "transformers model directory (no config.json)")
    elif base_model:
        raise ValueError(f"--base-model applies to SIMoE run directories; {source} is not one "
                         f"(no {CONFIG_NAME})")
    else:
        model = load_base_model(source, dtype=dtype)
        tok_src, task_ids, kind = source, None, "transformers"
    tokenizer = load_tokenizer(tok_src)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if device is not None:
        model.to(device)
    model.eval()
    return LoadedModel(model, tokenizer, kind, task_ids)


@torch.no_grad()
def generate(loaded: LoadedModel, prompts: Sequence[EncodedExample], batch_size: int = 8,
             max_new_tokens: int = 128, progress: bool = True) -> list[dict[str, Any]]:
    """Greedy continuations of ``prompts`` (in input order): text, and alpha for SIMoE.

    Prompts are batched longest first with left padding; each SIMoE example is routed on its
    own prompt (last non-pad token) and keeps that alpha while decoding.
    """
    model, tok = loaded.model, loaded.tokenizer
    device = next(model.parameters()).device
    collate = SIMoECollator(tok, padding_side="left")
    order = sorted(range(len(prompts)), key=lambda i: (-len(prompts[i].input_ids), i))
    results: list[dict[str, Any] | None] = [None] * len(prompts)
    batches = range(0, len(order), batch_size)
    for start in tqdm(batches, desc="generate", unit="batch", disable=not progress):
        idx = order[start:start + batch_size]
        batch = collate([prompts[i] for i in idx])
        ids = batch["input_ids"].to(device)
        mask = batch["attention_mask"].to(device)
        kwargs: dict[str, Any] = {"attention_mask": mask, "max_new_tokens": max_new_tokens,
                                  "do_sample": False, "num_beams": 1,
                                  "pad_token_id": tok.pad_token_id,
                                  "eos_token_id": tok.eos_token_id}
        alpha = None
        if isinstance(model, SIMoEModel):
            task_ids = batch.get("task_ids")
            alpha = model.route(ids, mask, task_ids=task_ids.to(device) if task_ids is not None
                                else None) if model.simoe_config.routing != "token" else None
            out = model.generate(ids, alpha=alpha, **kwargs)
        else:
            out = model.generate(input_ids=ids, **kwargs)
        new = out[:, ids.shape[1]:]
        texts = tok.batch_decode(new, skip_special_tokens=True)
        for j, i in enumerate(idx):
            results[i] = {"prediction": texts[j].strip(),
                          "alpha": alpha[j].tolist() if alpha is not None else None}
    return results  # type: ignore[return-value]
