"""lm-evaluation-harness bridge: a SIMoE run (or a plain model directory) as lm-eval's ``simoe``
model, routed on the right token for each request kind.

    python -m simoe.serving.lm_eval_model --model simoe --model_args run=RUN --tasks ...

lm-eval (0.4.x) has no plugin entry point for models: a model is known to it once the module
that registers it is imported. Running this module does that and hands the command line to
lm-eval's own (``lm_eval ...`` arguments, unchanged); in Python, ``import
simoe.serving.lm_eval_model`` before ``lm_eval.simple_evaluate(model="simoe", ...)``.

Model args: ``run`` (required), ``base_model`` (a run whose base moved), ``dtype``
(float32|bfloat16|float16), ``device``, ``batch_size``, ``max_length``, ``max_gen_toks``,
``add_bos_token``.

Routing position (instance routing):

- ``loglikelihood``: alpha comes from the *context* alone (its last token, as fed to the model
  after lm-eval's left truncation), never from a continuation token; context + continuation is
  then scored with that alpha fixed. Choices sharing a context share one routing pass.
- ``loglikelihood_rolling``: a document has no prompt; it is routed once on its first window
  (the prefix token and the document's first ``max_length - 1`` tokens, i.e. the whole
  document when it fits) and every window is scored at that alpha.
- ``generate_until``: the prompt's last token, alpha kept while decoding.

Token routing re-routes every position from its own prefix (causal, so no later token is read);
task routing is refused (no task id in lm-eval's requests).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

try:
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
except ImportError:  # without the extra: one line, also for `python -m`
    _MISSING = 'simoe\'s lm-eval bridge needs lm-evaluation-harness: pip install "simoe[eval]"'
    if __name__ == "__main__":
        print(f"simoe: {_MISSING}", file=sys.stderr)
        sys.exit(2)  # a user error, as the simoe command's
    raise ImportError(_MISSING) from None

from ..evaluation.generation import load_for_eval
from ..model import SIMoEModel
from ..runtime import model_max_length
from .generate import check_source

logger = logging.getLogger(__name__)

DEFAULT_MAX_LENGTH = 2048
DEFAULT_BATCH_SIZE = 8
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
# (context tokens, continuation tokens, fixed alpha or None = route on the context)
Scored = tuple[list[int], list[int], torch.Tensor | None]


def _batch_size(value: Any, fallback: Any) -> int:
    """lm-eval passes ints, numeric strings or "auto[:N]"; auto falls back to a fixed size."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, str) and value.isdigit() and int(value) > 0:
        return int(value)
    if value not in (None, "") and not str(value).startswith("auto"):
        raise ValueError(f"batch_size must be a positive integer or 'auto', got {value!r}")
    return fallback if isinstance(fallback, int) and fallback > 0 else DEFAULT_BATCH_SIZE


@register_model("simoe")
class SIMoELM(LM):
    """lm-eval's ``LM`` over a SIMoE run, loaded as ``simoe eval``/``simoe generate`` load it."""

    def __init__(self, run: str, base_model: str | None = None, device: str | None = None,
                 dtype: str = "float32", batch_size: int | str | None = None,
                 max_batch_size: int | None = None, max_length: int | None = None,
                 max_gen_toks: int = 256, add_bos_token: bool | None = None,
                 **kwargs: Any) -> None:
        super().__init__()
        for key in kwargs:
            logger.warning("simoe lm-eval model: ignoring unknown model arg %r", key)
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        elif str(device).startswith("cuda") and not torch.cuda.is_available():
            logger.warning("simoe lm-eval model: %s requested but CUDA is not available; "
                           "running on cpu", device)  # lm_eval's CLI defaults to cuda:0
            device = "cpu"
        loaded = load_for_eval(str(check_source(run)), dtype=_DTYPES[dtype], device=device,
                               base_model=base_model)
        self.model, self.tokenizer = loaded.model, loaded.tokenizer
        self.simoe = isinstance(self.model, SIMoEModel)
        routing = self.model.simoe_config.routing if self.simoe else None
        if routing == "task":
            raise ValueError(f"{run} routes by task id; lm-eval requests carry none (export a "
                             "fixed mixture with `simoe export --alpha task:NAME`)")
        self.fixed_routing = routing == "instance"  # route once per prompt, alpha held fixed
        self._device = torch.device(device)
        self.batch_size = _batch_size(batch_size, max_batch_size)
        self.max_length = int(max_length or model_max_length(self.model) or DEFAULT_MAX_LENGTH)
        self.max_gen_toks = int(max_gen_toks)
        self.add_bos_token = add_bos_token

    # ------------------------------------------------------------------ tokens
    @property
    def eot_token_id(self) -> int:
        """End of text: the tokenizer's EOS."""
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        """What an empty context becomes: BOS, else EOS (lm-eval's convention)."""
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.eot_token_id

    @property
    def tokenizer_name(self) -> str:
        """Names the tokenizer in lm-eval's request cache keys."""
        return str(getattr(self.tokenizer, "name_or_path", "simoe")).replace("/", "__")

    def tok_encode(self, text: str, add_special_tokens: bool | None = None) -> list[int]:
        """Token ids; special tokens as ``add_bos_token`` says, else the tokenizer's default."""
        if add_special_tokens is None:
            add_special_tokens = self.add_bos_token
        kwargs = {} if add_special_tokens is None else {"add_special_tokens": add_special_tokens}
        bos = self.tokenizer.bos_token
        if add_special_tokens is None and bos and text.startswith(bos):
            kwargs["add_special_tokens"] = False  # the text brings its own BOS
        return list(self.tokenizer(text, **kwargs)["input_ids"])

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """lm-eval's split: the context's trailing spaces move to the continuation, the whole
        string is encoded once and cut where the context's tokens end; an empty context is
        the prefix token."""
        if not context:
            cont = self.tok_encode(continuation, add_special_tokens=False)
            if cont and cont[0] == self.prefix_token_id:
                return cont[:1], cont[1:]
            return [self.prefix_token_id], cont
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
        whole = self.tok_encode(context + continuation)
        ctx = self.tok_encode(context)
        return ctx, whole[len(ctx):]

    # ------------------------------------------------------------------ routing
    def _pad(self, rows: Sequence[Sequence[int]], left: bool) -> tuple[torch.Tensor,
                                                                       torch.Tensor]:
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            span = slice(width - len(row), width) if left else slice(0, len(row))
            ids[i, span] = torch.tensor(row, dtype=torch.long)
            mask[i, span] = 1
        return ids.to(self.device), mask.to(self.device)

    @torch.no_grad()
    def route_prompts(self, prompts: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        """alpha of each prompt, read at its last token (left-padded batches; [M] each)."""
        out: list[torch.Tensor] = []
        for start in range(0, len(prompts), self.batch_size):
            ids, mask = self._pad(prompts[start:start + self.batch_size], left=True)
            out.extend(self.model.route(ids, mask).float().unbind(0))
        return out

    # ------------------------------------------------------------------ scoring
    @torch.no_grad()
    def score_tokens(self, items: Sequence[Scored]) -> list[tuple[float, bool]]:
        """Sum of the continuation's log-probabilities and whether greedy decoding gives it.

        Context + continuation keep their last ``max_length + 1`` tokens (lm-eval's left
        truncation); alpha is the item's own or, if None, the route of the context as fed."""
        results: list[tuple[float, bool]] = [(0.0, True)] * len(items)  # empty: log 1
        items = list(items)
        live = [i for i, (_, cont, _) in enumerate(items) if cont]
        inputs, cont_lens = [], []
        for i in live:
            ctx, cont, _ = items[i]
            whole = (list(ctx) + list(cont))[-(self.max_length + 1):]
            if len(cont) > len(whole) - 1:
                raise ValueError(f"a continuation of {len(cont)} tokens does not fit "
                                 f"max_length {self.max_length}")
            inputs.append(whole[:-1])
            cont_lens.append(len(cont))
        alphas: list[torch.Tensor | None] = [items[i][2] for i in live]
        if self.fixed_routing:
            contexts = {tuple(inp[:len(inp) - n + 1]) for (inp, n, a) in
                        zip(inputs, cont_lens, alphas, strict=True) if a is None}
            keys = sorted(contexts, key=len, reverse=True)
            routed = dict(zip(keys, self.route_prompts(keys), strict=True))
            alphas = [a if a is not None else routed[tuple(inp[:len(inp) - n + 1])]
                      for inp, n, a in zip(inputs, cont_lens, alphas, strict=True)]
        order = sorted(range(len(live)), key=lambda i: -len(inputs[i]))
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            ids, mask = self._pad([inputs[i] for i in idx], left=False)
            kwargs: dict[str, Any] = {"attention_mask": mask}
            if self.fixed_routing:
                kwargs["alpha"] = torch.stack([alphas[i] for i in idx]).to(self.device)
            logits = self.model(input_ids=ids, **kwargs).logits.float()
            for row, i in enumerate(idx):
                n, end = cont_lens[i], len(inputs[i])
                logp = F.log_softmax(logits[row, end - n:end], dim=-1)
                target = torch.tensor(items[live[i]][1], device=logp.device)
                total = logp.gather(-1, target[:, None]).sum().item()
                results[live[i]] = (float(total), bool((logp.argmax(-1) == target).all()))
        return results

    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False
                      ) -> list[tuple[float, bool]]:
        """(log P(continuation | context), is_greedy) per request, routed on the context."""
        pairs = [req.args for req in requests]
        items: list[Scored] = [(*self.encode_pair(c, x), None) for c, x in pairs]
        results = self.score_tokens(items)
        for pair, res in zip(pairs, results, strict=True):
            self.cache_hook.add_partial("loglikelihood", pair, res)
        return results

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False
                              ) -> list[float]:
        """Log-likelihood of each whole string in disjoint windows of ``max_length``, every
        window at the alpha of the document's first window."""
        totals = []
        for req in requests:
            (text,) = req.args
            windows = [make_disjoint_window(w) for w in get_rolling_token_windows(
                token_list=self.tok_encode(text), prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length, context_len=1)]
            alpha = None
            if self.fixed_routing and windows:
                ctx, cont = windows[0]
                alpha = self.route_prompts([(list(ctx) + list(cont))[:self.max_length]])[0]
            scores = self.score_tokens([(ctx, cont, alpha) for ctx, cont in windows])
            total = float(sum(s for s, _ in scores))
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), total)
            totals.append(total)
        return totals

    # ------------------------------------------------------------------ generation
    def _gen_kwargs(self, gen_kwargs: dict[str, Any]) -> tuple[list[str], int, dict[str, Any]]:
        """Stop strings (EOS text added), max new tokens, and transformers sampling kwargs."""
        kwargs = dict(gen_kwargs)
        until = kwargs.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        eos = self.tokenizer.decode([self.eot_token_id])
        if eos and eos not in until:
            until.append(eos)
        max_new = self.max_gen_toks
        for key in ("max_gen_toks", "max_new_tokens", "max_tokens"):
            if kwargs.get(key) is not None:
                max_new = int(kwargs.pop(key))
                break
        for key in ("max_gen_toks", "max_new_tokens", "max_tokens", "max_length"):
            kwargs.pop(key, None)
        temperature = float(kwargs.pop("temperature", 0.0) or 0.0)
        sample = bool(kwargs.pop("do_sample", temperature > 0.0)) and temperature > 0.0
        out: dict[str, Any] = {"do_sample": sample}
        if sample:
            out["temperature"] = temperature
            out.update({k: v for k, v in kwargs.items() if k in ("top_p", "top_k")})
        return until, max_new, out

    @torch.no_grad()
    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Continuations up to the first stop string, each routed on its prompt's last token."""
        args = [req.args for req in requests]
        groups: dict[str, list[int]] = {}
        for i, (_, gen_kwargs) in enumerate(args):
            groups.setdefault(repr(sorted(gen_kwargs.items())), []).append(i)
        results: list[str] = [""] * len(args)
        for members in groups.values():
            until, max_new, sampling = self._gen_kwargs(args[members[0]][1])
            budget = self.max_length - max_new
            if budget < 1:
                raise ValueError(f"max_gen_toks {max_new} leaves no room for a prompt within "
                                 f"max_length {self.max_length}")
            prompts = {i: self.tok_encode(args[i][0])[-budget:] for i in members}
            order = sorted(members, key=lambda i: -len(prompts[i]))
            for start in range(0, len(order), self.batch_size):
                idx = order[start:start + self.batch_size]
                ids, mask = self._pad([prompts[i] for i in idx], left=True)
                kwargs: dict[str, Any] = dict(
                    attention_mask=mask, max_new_tokens=max_new, stop_strings=until,
                    tokenizer=self.tokenizer, pad_token_id=self.tokenizer.pad_token_id,
                    eos_token_id=self.eot_token_id, num_beams=1, **sampling)
                if self.fixed_routing:
                    kwargs["alpha"] = self.model.route(ids, mask)
                    out = self.model.generate(ids, **kwargs)
                else:
                    out = self.model.generate(input_ids=ids, **kwargs)
                texts = self.tokenizer.batch_decode(out[:, ids.shape[1]:],
                                                    skip_special_tokens=True)
                for i, text in zip(idx, texts, strict=True):
                    for stop in until:
                        if stop:
                            text = text.split(stop)[0]
                    results[i] = text
                    self.cache_hook.add_partial("generate_until", args[i], text)
        return results


def main(argv: Sequence[str] | None = None) -> None:
    """lm-eval's command line with the ``simoe`` model registered."""
    from lm_eval.__main__ import cli_evaluate

    sys.argv = [sys.argv[0], *(sys.argv[1:] if argv is None else argv)]
    cli_evaluate()


if __name__ == "__main__":
    main()
