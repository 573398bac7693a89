"""The fixed mixture alpha a SIMoE run is exported or served at, from a spec string:

    mean            mean alpha over the run's training prompts
    task:NAME       mean alpha of the training prompts of task NAME
    category:NAME   mean alpha of the training prompts of category NAME
    expert:I        expert I alone (one-hot)
    prompt:TEXT     the alpha the router gives TEXT
    [a0, ..., aM-1] a JSON vector: M non-negative weights summing to 1 (within 1e-4)

The training prompts' alphas come from the run's routing cache (embeddings in the order of the
training examples) through the run's router; ``task:``/``category:`` re-load the examples with
the data, split and options the run recorded (job.json) to learn each prompt's task/category.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from ..data import DataError, encode_examples, load_examples
from ..model import SIMoEModel
from ..training.routing_cache import compute_routing_embeddings
from ..training.rundir import FINAL_STATS_NAME, ROUTING_CACHE_DIR
from .requests import Request, encode_request, prompt_budget

KINDS = ("mean", "task", "category", "expert", "prompt", "vector")
SUM_TOLERANCE = 1e-4


@dataclass(frozen=True)
class AlphaSpec:
    """A parsed spec: ``kind`` (one of :data:`KINDS`), its argument, the text it came from."""

    kind: str
    value: Any
    text: str


def parse_alpha_spec(spec: str, num_experts: int) -> AlphaSpec:
    """Check a spec against a run of ``num_experts`` experts (ValueError, one line)."""
    text = spec.strip()
    hint = ("choose mean, task:NAME, category:NAME, expert:I, prompt:TEXT or a JSON vector of "
            f"{num_experts} weights")
    if text == "mean":
        return AlphaSpec("mean", None, spec)
    if text.startswith("["):
        return AlphaSpec("vector", _vector(text, num_experts), spec)
    kind, sep, arg = text.partition(":")
    if not sep or kind not in KINDS[1:5]:
        raise ValueError(f"--alpha {spec!r}: unknown spec; {hint}")
    if kind == "prompt":
        arg = spec.split(":", 1)[1]
    if not arg.strip():
        what = {"prompt": "a text", "expert": "an index"}.get(kind, "a name")
        raise ValueError(f"--alpha {spec!r}: {kind}: needs {what} after the colon")
    if kind == "expert":
        try:
            index = int(arg)
        except ValueError:
            raise ValueError(f"--alpha {spec!r}: expert index must be an integer") from None
        if not 0 <= index < num_experts:
            raise ValueError(f"--alpha {spec!r}: expert index {index} is out of range; the run "
                             f"has {num_experts} experts (0..{num_experts - 1})")
        return AlphaSpec("expert", index, spec)
    return AlphaSpec(kind, arg, spec)


def _vector(text: str, num_experts: int) -> list[float]:
    try:
        values = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"--alpha {text!r}: not a JSON vector ({err.msg})") from None
    if not isinstance(values, list) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise ValueError(f"--alpha {text!r}: a vector must be a JSON list of numbers")
    if len(values) != num_experts:
        raise ValueError(f"--alpha {text!r}: {len(values)} weights for a run of {num_experts} "
                         "experts")
    if any(not math.isfinite(v) or v < 0 for v in values):
        raise ValueError(f"--alpha {text!r}: weights must be finite and non-negative")
    total = math.fsum(values)
    if abs(total - 1.0) > SUM_TOLERANCE:
        raise ValueError(f"--alpha {text!r}: weights sum to {total:.6g}, not 1 (within "
                         f"{SUM_TOLERANCE:g})")
    return [float(v) for v in values]


def run_record(run: Path) -> dict[str, Any]:
    """What a run recorded about its job: job.json updated by final_stats.json (a checkpoint
    directory reads its run's files)."""
    record: dict[str, Any] = {}
    for directory in (run.parent, run):
        for name in ("job.json", FINAL_STATS_NAME):
            file = directory / name
            if file.is_file():
                try:
                    data = json.loads(file.read_text())
                except ValueError:
                    continue
                if isinstance(data, dict):
                    record.update(data)
    return record


def _training_examples(run: Path, record: dict[str, Any]) -> list:
    data = record.get("data")
    if not data:
        raise ValueError(f"{run}: the run records no training data (job.json); task:/category: "
                         "need it (use mean, expert:I, prompt:TEXT or a JSON vector)")
    if data.startswith("/") and not Path(data).exists():
        raise DataError(f"the training data of {run} ({data}) is not available here; "
                        "task:/category: need it (use mean, expert:I, prompt:TEXT or a vector)")
    return load_examples(data, record.get("split", "train"),
                         skip_invalid=bool(record.get("skip_invalid", False)),
                         num_pos_examples=int(record.get("num_pos_examples", 2)),
                         max_instances_per_task=record.get("max_instances_per_task", 100))


@torch.no_grad()
def training_alphas(run: Path, model: SIMoEModel, tokenizer: Any, examples: list | None = None
                    ) -> tuple[torch.Tensor, list | None]:
    """alpha ([N, M]) of every training prompt, and the training examples when given or used
    (checked to be as many as the cached prompts).

    Instance routing reads the run's routing cache (or, without one, routes the re-encoded
    prompts); task routing maps each example's task through ``task_ids.json``."""
    record = run_record(run)
    routing = model.simoe_config.routing
    if routing == "token":
        raise ValueError("a run with token routing has no single alpha per prompt; use "
                         "expert:I or a JSON vector")
    caches = sorted((run / ROUTING_CACHE_DIR).glob("routing-*.safetensors")) \
        if routing == "instance" else []
    if examples is None and not caches:
        examples = _training_examples(run, record)
    if caches:
        emb = load_file(caches[0])["embeddings"]
        alpha = model.route(routing_embedding=emb.to(model.device))
    elif routing == "task":
        names = json.loads((run / "task_ids.json").read_text())
        ids = torch.tensor([names[ex.task] for ex in examples], device=model.device)
        alpha = model.route(task_ids=ids)
    else:
        encoded = encode_examples(examples, tokenizer, int(record.get("max_source_len", 1024)),
                                  int(record.get("max_target_len", 128)))
        emb = compute_routing_embeddings(model, tokenizer, encoded)
        alpha = model.route(routing_embedding=emb.to(model.device))
    if examples is not None and len(examples) != alpha.shape[0]:
        raise DataError(f"{run}: its routing cache holds {alpha.shape[0]} prompts but "
                        f"{record.get('data')} now gives {len(examples)} training examples "
                        "(the data changed since training)")
    return alpha.float(), examples


def check_names(spec: AlphaSpec, run: Path) -> list | None:
    """For ``task:``/``category:``, the run's training examples, once checked to hold that
    name (so a wrong name fails before any model is loaded); else None."""
    if spec.kind not in ("task", "category"):
        return None
    examples = _training_examples(run, run_record(run))
    names = {getattr(ex, spec.kind) for ex in examples}
    if spec.value not in names:
        known = sorted(n for n in names if n)
        plural = "tasks" if spec.kind == "task" else "categories"
        shown = ", ".join(known[:8]) + (", ..." if len(known) > 8 else "")
        raise ValueError(f"--alpha {spec.text!r}: no training prompt of {spec.kind} "
                         f"{spec.value!r}; the run's {plural} are: {shown or 'none'}")
    return examples


def resolve_alpha(spec: AlphaSpec, run: Path, model: SIMoEModel, tokenizer: Any,
                  examples: list | None = None) -> torch.Tensor:
    """The [M] fp32 mixture a spec names for the run's model (on the CPU). ``examples``: the
    run's training examples if already loaded (see :func:`check_names`)."""
    m = model.simoe_config.num_experts
    if spec.kind == "vector":
        return torch.tensor(spec.value, dtype=torch.float32)
    if spec.kind == "expert":
        return torch.nn.functional.one_hot(torch.tensor(spec.value), m).float()
    if spec.kind == "prompt":
        if model.simoe_config.routing != "instance":
            raise ValueError(f"prompt: needs a run with instance routing; this run routes by "
                             f"{model.simoe_config.routing}")
        enc = encode_request(Request(prompt=spec.value, where="--alpha prompt:"), tokenizer,
                             prompt_budget(model, 1))
        ids = torch.tensor([enc.input_ids], device=model.device)
        return model.route(ids, torch.ones_like(ids))[0].float().cpu()
    if spec.kind != "mean" and examples is None:
        examples = check_names(spec, run)
    alpha, examples = training_alphas(run, model, tokenizer, examples)
    if spec.kind == "mean":
        return alpha.mean(0).cpu()
    rows = [i for i, ex in enumerate(examples) if getattr(ex, spec.kind) == spec.value]
    return alpha[rows].mean(0).cpu()
