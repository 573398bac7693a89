"""Training step time of SIMoE against full fine-tuning, measured in the same run.

    python benchmarks/step_time.py [--layers 6 --hidden 256 --batch 8 --seq 256 --steps 10]

Prints one row per variant with its step time and its ratio to full fine-tuning:
full FT, SIMoE with the routing pass inline, SIMoE with cached routing embeddings, the same
with only 25% of the columns alive (what pruning during training would leave), and the naive
per-example weight form the two-matmul layer avoids. A random Llama is used (no download);
``--model PATH`` times a real one instead.
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from simoe import SIMoEConfig, SIMoEModel
from simoe.layers import SIMoELinear


def _base(args: argparse.Namespace) -> torch.nn.Module:
    if args.model:
        return AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=2048, hidden_size=args.hidden, intermediate_size=args.hidden * 8
                      // 3, num_hidden_layers=args.layers, num_attention_heads=max(1, args.hidden
                                                                                   // 64),
                      max_position_embeddings=max(512, args.seq))
    return AutoModelForCausalLM.from_config(cfg)


def _time(step, steps: int) -> float:
    step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def _naive_forward(self: SIMoELinear, x: torch.Tensor) -> torch.Tensor:
    """y_b = x_b (W_pre + sum_i alpha_bi z_i * delta)^T with a [B, out, in] weight per batch."""
    alpha = self.state.alpha_for(x.shape[0])
    wd = self.weight_delta
    m = wd.dense(wd.mix(alpha))  # [B, in]
    delta = wd.dense(wd.delta)  # [out, in]
    w = self.base_layer.weight if not self.transposed else self.base_layer.weight.t()
    weights = w.unsqueeze(0) + m[:, None, :] * delta.unsqueeze(0)
    y = torch.einsum("bti,boi->bto", x, weights)
    bias = getattr(self.base_layer, "bias", None)
    return y + bias if bias is not None else y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--prompt", type=int, default=192, help="prompt tokens of each sequence")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    dev = torch.device(args.device)

    g = torch.Generator().manual_seed(0)
    base = _base(args).to(dev)
    ids = torch.randint(3, base.config.vocab_size, (args.batch, args.seq), generator=g).to(dev)
    labels = ids.clone()
    labels[:, : args.prompt] = -100
    rows: list[tuple[str, float]] = []

    opt = torch.optim.Adam(base.parameters(), lr=1e-5)

    def full_step() -> None:
        base(input_ids=ids, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    rows.append(("full fine-tuning", _time(full_step, args.steps)))

    model = SIMoEModel.from_base(base, SIMoEConfig()).train()
    with torch.no_grad():
        for _, gd in model.gated_deltas():
            gd.delta.normal_(0, 1e-3)
    sopt = torch.optim.Adam(model.parameter_groups(2e-5, 1e-2, 1e-4))
    cached = model.routing_embedding(ids, labels=labels)

    def simoe_step(use_cache: bool):
        def step() -> None:
            kw = {"routing_embedding": cached} if use_cache else {}
            model(ids, labels=labels, **kw).loss.backward()
            sopt.step()
            sopt.zero_grad(set_to_none=True)
        return step

    rows.append(("SIMoE, routing pass inline", _time(simoe_step(False), args.steps)))
    rows.append(("SIMoE, cached routing", _time(simoe_step(True), args.steps)))

    original = SIMoELinear.forward
    SIMoELinear.forward = _naive_forward
    try:
        rows.append(("naive per-example weights, cached", _time(simoe_step(True), args.steps)))
    finally:
        SIMoELinear.forward = original

    keep_gen = torch.Generator().manual_seed(1)
    for _, gd in model.gated_deltas():
        keep = torch.rand(gd.num_live, generator=keep_gen) < 0.25
        gd.keep_columns(keep.to(gd.live_idx.device))
    sopt = torch.optim.Adam(model.parameter_groups(2e-5, 1e-2, 1e-4))
    rows.append(("SIMoE, cached routing, 25% columns", _time(simoe_step(True), args.steps)))

    full = rows[0][1]
    print(f"device={dev} layers={args.layers} hidden={args.hidden} batch={args.batch} "
          f"seq={args.seq} steps={args.steps}")
    print(f"{'variant':40s} {'step (ms)':>10s} {'ratio':>7s}")
    for name, t in rows:
        print(f"{name:40s} {t * 1e3:10.1f} {t / full:7.2f}")


if __name__ == "__main__":
    main()
