"""`simoe export`: a SIMoE run merged at one fixed mixture alpha into a plain transformers
checkpoint (safetensors weights, config, generation config, tokenizer, README.md model card)
that ``AutoModelForCausalLM.from_pretrained`` loads without simoe.

The directory is written beside ``output`` under a temporary name and renamed into place, so a
failed export leaves nothing behind; a non-empty ``output`` is replaced only with
``overwrite=True`` and only if it holds a model (config.json).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import CONFIG_NAME, SIMoEConfig
from ..evaluation.generation import load_for_eval
from ..runtime import check_output_dir
from .alpha import check_names, parse_alpha_spec, resolve_alpha, run_record

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
CARD_NAME = "README.md"


@dataclass
class Export:
    """What :func:`export_run` wrote: the directory, the mixture and the spec it came from."""

    path: Path
    alpha: list[float]
    spec: str


def check_run(run: str | Path) -> Path:
    """The run directory, refused (one line) unless it holds a SIMoE checkpoint."""
    path = Path(run).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"run {run}: no such directory")
    if not (path / CONFIG_NAME).is_file():
        raise ValueError(f"{run} is not a SIMoE run (no {CONFIG_NAME}); baseline runs are "
                         "already plain transformers models")
    return path


def check_output(output: str | Path, run: Path, overwrite: bool) -> Path:
    """The export directory: writable, not the run, empty unless ``overwrite`` (and then it
    must hold a model, so no other directory is ever replaced)."""
    out = check_output_dir(output)
    if out.exists() and out.resolve() == run.resolve():
        raise ValueError(f"--output {output} is the run directory itself; choose another")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"--output {output} is not empty; pass --overwrite to "
                                  "replace it")
        if not (out / "config.json").is_file():
            raise ValueError(f"--overwrite refuses to replace {output}: it holds no model "
                             "(no config.json)")
    return out


def model_card(run: Path, spec: str, alpha: list[float], dtype: str, config: SIMoEConfig,
               record: dict[str, Any], num_params: int) -> str:
    """The README.md of an export: base, method, alpha, the run's sparsity, how to load it."""
    base = record.get("base_model") or config.base_model_name_or_path or "unknown"
    method = record.get("method", "simoe")
    sp = record.get("sparsity") or {}
    if "union" in sp:
        per = ", ".join(f"{v:.4f}" for v in sp.get("per_expert", []))
        sparsity = (f"union {sp['union']:.4f} (target {record.get('target_sparsity', '?')}), "
                    f"mean over experts {sp.get('mean', float('nan')):.4f}, per expert [{per}]")
    else:
        sparsity = "not recorded (the run has no final_stats.json)"
    vec = "[" + ", ".join(f"{a:.6f}" for a in alpha) + "]"
    return "\n".join([
        "---", "library_name: transformers", f"base_model: {json.dumps(str(base))}",
        "tags: [simoe, merged]", "---", "",
        f"# SIMoE export of `{run.name}`", "",
        f"- **Base model**: `{base}`",
        f"- **Method**: {'SIMoE' if method == 'simoe' else method} (Sparse Interpolated "
        "Mixture-of-Experts, Chen, Wei & Schwarz, ACL 2025), merged at a fixed mixture: "
        "every targeted parameter is `theta_pre + sum_i alpha_i z_i * theta_delta`",
        f"- **alpha** (`--alpha {spec}`, {config.num_experts} experts): {vec}",
        f"- **Sparsity of the run** (final_stats.json): {sparsity}",
        f"- **Routing**: {config.routing} in the run; none here (one mixture for every prompt)",
        f"- **dtype**: {dtype}; {num_params:,} parameters", "",
        "Exported by `simoe export` from the run directory "
        f"`{run.resolve()}`. Load it with:", "",
        "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
        'model = AutoModelForCausalLM.from_pretrained("THIS_DIRECTORY")',
        'tokenizer = AutoTokenizer.from_pretrained("THIS_DIRECTORY")', "```", ""])


def _publish(tmp: Path, out: Path) -> None:
    """Rename the finished ``tmp`` to ``out``, replacing an existing directory there."""
    if out.is_dir():
        old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
        out.rename(old / "d")
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)


def export_run(run: str | Path, output: str | Path, alpha: str = "mean", dtype: str = "fp32",
               base_model: str | None = None, overwrite: bool = False) -> Export:
    """Merge the SIMoE run at the mixture ``alpha`` names (see :mod:`simoe.serving.alpha`) and
    write it to ``output`` as a plain transformers checkpoint. Every argument is checked before
    any model is loaded; nothing is written unless the export succeeds."""
    if dtype not in DTYPES:
        raise ValueError(f"--dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    run_dir = check_run(run)
    config = SIMoEConfig.load(run_dir)
    spec = parse_alpha_spec(alpha, config.num_experts)
    out = check_output(output, run_dir, overwrite)
    examples = check_names(spec, run_dir)
    loaded = load_for_eval(str(run_dir), base_model=base_model)
    model, tokenizer = loaded.model, loaded.tokenizer
    a = resolve_alpha(spec, run_dir, model, tokenizer, examples)
    dense = model.merge_and_unload(a)
    dense.to(DTYPES[dtype]).eval()
    for p in dense.parameters():
        p.requires_grad_(False)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp's 0700 would outlive the rename
    try:
        dense.save_pretrained(tmp)
        gen_config = getattr(dense, "generation_config", None)
        if gen_config is not None and not (tmp / "generation_config.json").is_file():
            gen_config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        card = model_card(run_dir, spec.text, a.tolist(), dtype, config, run_record(run_dir),
                          sum(p.numel() for p in dense.parameters()))
        (tmp / CARD_NAME).write_text(card)
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Export(out, a.tolist(), spec.text)
