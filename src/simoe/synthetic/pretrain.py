"""The embedded base model: a small Llama pre-trained from scratch on :func:`generic_text`.

:func:`pretrain_base` trains a byte-level BPE tokenizer (:func:`train_tokenizer`) and a
``LlamaForCausalLM`` on packed generic sentences (no instruction format), then saves both with
``save_pretrained`` plus ``pretrain_stats.json``. The result stands in for the dense pre-trained
LLM that SIMoE upcycles; it is cached under a key of all training arguments.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from simoe.synthetic.tasks import GENERATOR_VERSION, generic_text, instruction_texts

logger = logging.getLogger(__name__)

PRETRAIN_VERSION = "1"
STATS_NAME = "pretrain_stats.json"
PAD, BOS, EOS = "<pad>", "<s>", "</s>"
MAX_POSITIONS = 512
TOKENIZER_SENTENCES = 40_000  # generic sentences used to train the tokenizer
INSTRUCTION_WEIGHT = 10  # repeats of the instruction texts in the tokenizer training data
MAX_CORPUS_TOKENS = 3_000_000  # the packed corpus is reused (reshuffled) beyond this
EVAL_BLOCKS = 64


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """Byte-level BPE tokenizer trained on ``texts``: digits split individually, ``<pad>``,
    ``<s>``, ``</s>`` special tokens (ids 0, 1, 2), ``<s>`` prepended to every encoded text.
    ``decode(encode(s), skip_special_tokens=True) == s`` for any string."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        clean_up_tokenization_spaces=False,
        model_max_length=MAX_POSITIONS,
    )


def pretrain_key(**kwargs: Any) -> str:
    """Cache key of a pre-training run: hash of the code versions and ``kwargs``."""
    payload = {"pretrain": PRETRAIN_VERSION, "generator": GENERATOR_VERSION, **kwargs}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def read_stats(path: str | Path) -> dict[str, Any] | None:
    """``pretrain_stats.json`` of a saved base model, or ``None`` if absent or unreadable."""
    try:
        stats = json.loads(Path(path, STATS_NAME).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return stats if isinstance(stats, dict) else None


def _is_complete(path: Path, key: str) -> bool:
    stats = read_stats(path)
    return (
        stats is not None
        and stats.get("key") == key
        and (path / "config.json").is_file()
        and (path / "tokenizer.json").is_file()
        and any(path.glob("*.safetensors"))
    )


def _documents(sentences: Sequence[str], rng: random.Random) -> list[str]:
    """Group consecutive sentences into short documents joined by spaces or newlines."""
    docs, i = [], 0
    while i < len(sentences):
        n = rng.randint(1, 8)
        sep = rng.choice((" ", "\n"))
        docs.append(sep.join(sentences[i : i + n]))
        i += n
    return docs


def _pack(tokenizer: PreTrainedTokenizerFast, docs: Sequence[str], seq_len: int) -> torch.Tensor:
    """``[BOS] doc [EOS]`` for every document, concatenated and cut into ``seq_len`` blocks."""
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for ids in tokenizer(list(docs))["input_ids"]:
        stream.extend(ids)
        stream.append(eos)
    n = len(stream) // seq_len
    return torch.tensor(stream[: n * seq_len], dtype=torch.long).view(n, seq_len)


def _corpus(
    tokenizer: PreTrainedTokenizerFast, seed: int, seq_len: int, want_tokens: int
) -> torch.Tensor:
    """Packed generic text of about ``want_tokens`` tokens (at least one block)."""
    rng = random.Random(f"simoe-pretrain-docs:{seed}")
    blocks: list[torch.Tensor] = []
    have, chunk = 0, 0
    per_chunk = max(500, min(20_000, want_tokens // 8))  # about 12 tokens per sentence
    while have < want_tokens or not blocks:
        sentences = generic_text(per_chunk, seed=seed * 1_000_003 + chunk)
        packed = _pack(tokenizer, _documents(sentences, rng), seq_len)
        blocks.append(packed)
        have += packed.numel()
        chunk += 1
    return torch.cat(blocks)


def _lr_at(step: int, lr: float, warmup: int, horizon: int) -> float:
    """Linear warmup to ``lr``, then cosine decay to ``lr / 10`` at ``horizon``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, horizon - warmup))
    return lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def _prepare_output(output: Path) -> None:
    if output.exists() and not (
        output.is_dir() and (not any(output.iterdir()) or (output / STATS_NAME).is_file())
    ):
        raise FileExistsError(f"{output} exists and is not a simoe base model; not replacing")


def _move_into_place(tmp: Path, output: Path) -> None:
    if output.exists():
        old = output.parent / f".{output.name}.old-{os.getpid()}"
        output.rename(old)
        tmp.rename(output)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(output)


@torch.no_grad()
def _eval_loss(model: LlamaForCausalLM, blocks: torch.Tensor, batch_size: int) -> float:
    model.eval()
    losses = [
        model(input_ids=blocks[i : i + batch_size], labels=blocks[i : i + batch_size]).loss.item()
        for i in range(0, len(blocks), batch_size)
    ]
    model.train()
    return sum(losses) / len(losses)


def pretrain_base(
    output: str | Path,
    seed: int = 0,
    max_steps: int = 2000,
    time_budget_s: float | None = None,
    hidden_size: int = 128,
    layers: int = 4,
    heads: int = 4,
    intermediate: int = 352,
    seq_len: int = 128,
    batch_size: int = 16,
    lr: float = 3e-3,
    *,
    vocab_size: int = 1024,
    num_threads: int | None = None,
    progress: bool = True,
) -> Path:
    """Pre-train the embedded base model into ``output`` (or reuse it) and return the path.

    Trains :func:`train_tokenizer` on generic text plus instruction texts, then a Llama
    (``tie_word_embeddings``, 512 positions) from scratch on packed :func:`generic_text` with
    AdamW, linear warmup and cosine decay, until ``max_steps`` or until ``time_budget_s``
    seconds after the call started (the schedule is shortened to the steps that fit; the
    default None makes the result depend on the recipe only, not the machine). Writes
    model, tokenizer and ``pretrain_stats.json`` to a temporary sibling directory, then renames
    it to ``output``. If ``output`` already holds a model with the same key (all arguments
    except ``time_budget_s``, ``num_threads`` and ``progress``) that ran all ``max_steps``,
    returns at once; a base cut short by a time budget is reused only by a budgeted call.
    ``num_threads`` sets ``torch.set_num_threads`` for the call.
    """
    start = time.perf_counter()
    output = Path(output)
    args = dict(
        seed=seed, max_steps=max_steps, hidden_size=hidden_size, layers=layers, heads=heads,
        intermediate=intermediate, seq_len=seq_len, batch_size=batch_size, lr=lr,
        vocab_size=vocab_size,
    )  # fmt: skip
    key = pretrain_key(**args)
    if _is_complete(output, key) and (time_budget_s is not None
                                      or read_stats(output).get("stopped_by") == "max_steps"):
        logger.info("pretrain_base: reusing %s (key %s)", output, key)
        return output
    _prepare_output(output)
    if max_steps < 1:
        raise ValueError("max_steps must be >= 1")
    if hidden_size % heads:
        raise ValueError(f"hidden_size={hidden_size} is not divisible by heads={heads}")

    old_threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        stats = _train(output, key, args, start, time_budget_s, progress)
    finally:
        if num_threads is not None:
            torch.set_num_threads(old_threads)
    logger.info(
        "pretrain_base: %d steps in %.0f s, loss %.3f -> %s",
        stats["steps"], stats["wall_time_s"], stats["final_loss"], output,
    )  # fmt: skip
    return output


def _train(
    output: Path,
    key: str,
    args: dict[str, Any],
    start: float,
    time_budget_s: float | None,
    progress: bool,
) -> dict[str, Any]:
    seed, max_steps, seq_len = args["seed"], args["max_steps"], args["seq_len"]
    batch_size, lr = args["batch_size"], args["lr"]
    deadline = None if time_budget_s is None else start + time_budget_s

    tok_texts = generic_text(TOKENIZER_SENTENCES, seed=seed)
    tok_texts += instruction_texts(seed) * INSTRUCTION_WEIGHT
    tokenizer = train_tokenizer(tok_texts, vocab_size=args["vocab_size"])

    want = min(max_steps * batch_size * seq_len, MAX_CORPUS_TOKENS)
    blocks = _corpus(tokenizer, seed, seq_len, want)
    eval_blocks = _corpus(tokenizer, seed + 7919, seq_len, EVAL_BLOCKS * seq_len)[:EVAL_BLOCKS]

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=args["hidden_size"],
        intermediate_size=args["intermediate"],
        num_hidden_layers=args["layers"],
        num_attention_heads=args["heads"],
        num_key_value_heads=args["heads"],
        max_position_embeddings=MAX_POSITIONS,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    model.train()
    params = sum(p.numel() for p in model.parameters())
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr,
        betas=(0.9, 0.95),
    )
    warmup = max(1, min(100, max_steps // 10))
    horizon = max_steps
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(blocks), generator=gen)
    cursor = 0
    losses: list[float] = []
    ema: float | None = None
    stopped_by = "max_steps"
    loop_start = time.perf_counter()
    bar = tqdm(total=max_steps, desc="pretrain", unit="step", disable=not progress)
    step = 0
    while step < horizon:
        if cursor + batch_size > len(order):
            order, cursor = torch.randperm(len(blocks), generator=gen), 0
        batch = blocks[order[cursor : cursor + batch_size]]
        cursor += batch_size
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, lr, warmup, horizon)
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        value = loss.item()
        losses.append(value)
        ema = value if ema is None else 0.95 * ema + 0.05 * value
        bar.update(1)
        bar.set_postfix(loss=f"{ema:.3f}", lr=f"{opt.param_groups[0]['lr']:.1e}")
        if deadline is not None:
            now = time.perf_counter()
            if now >= deadline:
                stopped_by = "time_budget"
                break
            if step in (10, 30) or step % 50 == 0:  # fit the schedule into the time left
                per_step = (now - loop_start) / step
                fits = step + int((deadline - now) / per_step)
                horizon = max(step + 1, min(max_steps, fits))
                bar.total = horizon
                bar.refresh()
    if step < max_steps and stopped_by == "max_steps":
        stopped_by = "time_budget"
    bar.close()
    train_time = time.perf_counter() - loop_start
    eval_loss = _eval_loss(model, eval_blocks, batch_size)
    model.eval()

    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.parent / f".{output.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tail = losses[-20:]
    stats = {
        "key": key,
        "seed": seed,
        "steps": step,
        "max_steps": max_steps,
        "stopped_by": stopped_by,
        "time_budget_s": time_budget_s,
        "final_loss": round(sum(tail) / len(tail), 4),
        "last_loss": round(losses[-1], 4),
        "eval_loss": round(eval_loss, 4),
        "train_time_s": round(train_time, 2),
        "steps_per_s": round(step / train_time, 3) if train_time > 0 else None,
        "tokens_seen": step * batch_size * seq_len,
        "corpus_tokens": int(blocks.numel()),
        "params": params,
        "vocab_size": len(tokenizer),
        "args": args,
        "versions": {"pretrain": PRETRAIN_VERSION, "generator": GENERATOR_VERSION},
        "torch_threads": torch.get_num_threads(),
    }
    stats["wall_time_s"] = round(time.perf_counter() - start, 2)
    (tmp / STATS_NAME).write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
    _move_into_place(tmp, output)
    return stats


def complete(
    model_dir: str | Path, prompts: Sequence[str], max_new_tokens: int = 12
) -> list[str]:
    """Greedy continuations of ``prompts`` by a saved model (cut at the first newline)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    out = []
    with torch.no_grad():
        for prompt in prompts:
            ids = tokenizer(prompt, return_tensors="pt")
            gen = model.generate(
                **ids,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            text = tokenizer.decode(gen[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
            out.append(text.split("\n", 1)[0])
    return out
