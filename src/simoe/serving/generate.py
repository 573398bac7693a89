"""`simoe generate`: greedy answers from a SIMoE run (or a plain model directory), each request
routed on its own prompt.

One ``prompt``: routed once, merged at its alpha (one merge per request, so decoding runs at the
base model's speed) and streamed to the terminal. A JSONL ``file``: batched with left padding,
each row keeping its own alpha while decoding (no merge). Rows written: ``{"prompt",
"completion", "alpha"}`` (plus ``"messages"`` for chat requests).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
from transformers import TextStreamer

from ..data import EncodedExample
from ..evaluation.generation import LoadedModel, generate, load_for_eval
from ..model import SIMoEModel
from ..runtime import atomic_write_text, check_output_file
from .requests import Request, encode_requests, prompt_budget, prompt_text, read_requests


def check_source(run: str | Path) -> Path:
    """A local SIMoE run or model directory (FileNotFoundError, one line, if missing)."""
    path = Path(run).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"run {run}: no such directory")
    return path


@torch.no_grad()
def generate_one(loaded: LoadedModel, prompt: EncodedExample, max_new_tokens: int,
                 stream: bool = True) -> dict[str, Any]:
    """Route one prompt, merge the SIMoE model at its alpha (the model is spent afterwards),
    decode greedily; tokens are printed as they come when ``stream``."""
    model, tok = loaded.model, loaded.tokenizer
    device = next(model.parameters()).device
    ids = torch.tensor([prompt.input_ids], device=device)
    kwargs: dict[str, Any] = {"attention_mask": torch.ones_like(ids),
                              "max_new_tokens": max_new_tokens, "do_sample": False,
                              "num_beams": 1, "pad_token_id": tok.pad_token_id,
                              "eos_token_id": tok.eos_token_id}
    if stream:
        kwargs["streamer"] = TextStreamer(tok, skip_prompt=True, skip_special_tokens=True)
    alpha = None
    lm = model
    if isinstance(model, SIMoEModel) and model.simoe_config.routing == "instance":
        alpha = model.route(ids, kwargs["attention_mask"])[0]
        lm = model.merge_and_unload(alpha)
    out = lm.generate(input_ids=ids, **kwargs)
    text = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    return {"prediction": text.strip(),
            "alpha": alpha.float().cpu().tolist() if alpha is not None else None}


def generate_run(run: str | Path, prompt: str | None = None, file: str | Path | None = None,
                 chat: bool = False, max_new_tokens: int = 128, output: str | Path | None = None,
                 base_model: str | None = None, stream: bool = True, batch_size: int = 8,
                 device: str | None = None) -> list[dict[str, Any]]:
    """Answer ``prompt`` or every request of the JSONL ``file``; returns the rows and writes
    them as JSONL to ``output`` (file requests go to stdout without one). Every input is
    checked before the model is loaded."""
    if (prompt is None) == (file is None):
        raise ValueError("give exactly one of --prompt and --file")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) \
            or max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be an integer >= 1, got {max_new_tokens!r}")
    source = check_source(run)
    if prompt is not None:
        if not prompt.strip():
            raise ValueError("--prompt is empty")
        requests = [Request(prompt=prompt)]
    else:
        requests = read_requests(file)
    out_file = check_output_file(output) if output else None
    if device is None and torch.cuda.is_available():
        device = "cuda"
    loaded = load_for_eval(str(source), device=device, base_model=base_model)
    model = loaded.model
    if isinstance(model, SIMoEModel) and model.simoe_config.routing == "task":
        raise ValueError(f"{run} routes by task id; simoe generate routes on the prompt "
                         "(export a fixed mixture with `simoe export --alpha task:NAME`)")
    encoded = encode_requests(requests, loaded.tokenizer, prompt_budget(model, max_new_tokens),
                              chat)
    if prompt is not None:
        results = [generate_one(loaded, encoded[0], max_new_tokens, stream)]
    else:
        results = generate(loaded, encoded, batch_size, max_new_tokens, progress=False)
    rows = []
    for req, res in zip(requests, results, strict=True):
        row: dict[str, Any] = {"prompt": prompt_text(req, loaded.tokenizer, chat),
                               "completion": res["prediction"], "alpha": res["alpha"]}
        if req.messages is not None:
            row["messages"] = req.messages
        rows.append(row)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    if out_file is not None:
        out_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_file, text)
    elif file is not None:
        sys.stdout.write(text)
    return rows
