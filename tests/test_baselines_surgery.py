"""Model surgery for the sparse-upcycling and BTX baselines, and the router losses."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, MixtralForCausalLM

from conftest import SNI_MINI, TINY_CONFIGS, tiny_model
from simoe.baselines import (
    DEFAULT_SNI_DOMAINS,
    FALLBACK_DOMAIN,
    SUPPORTED_FOR_UPCYCLING,
    btx_merge,
    check_upcyclable,
    domain_of,
    load_balancing_loss,
    router_z_loss,
    upcycle_to_mixtral,
)


def _batch(vocab: int = 97, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (3, 11), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # left padding in one row
    return ids, mask


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


# ----------------------------------------------------------------------------- upcycling


@pytest.mark.parametrize("arch", ["llama", "mistral"])
@pytest.mark.parametrize("top_k", [1, 2])
def test_upcycled_reproduces_dense(arch: str, top_k: int) -> None:
    dense = tiny_model(arch)
    moe = upcycle_to_mixtral(dense, num_experts=4, top_k=top_k).eval()
    assert isinstance(moe, MixtralForCausalLM)
    ids, mask = _batch()
    with torch.no_grad():
        want = dense(ids, attention_mask=mask).logits
        got = moe(ids, attention_mask=mask).logits
    assert _max_diff(want * mask[..., None], got * mask[..., None]) <= 1e-5
    out_d = dense.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False)
    out_m = moe.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False)
    assert torch.equal(out_d, out_m)


def test_upcycled_config_and_weights() -> None:
    dense = tiny_model("llama")
    moe = upcycle_to_mixtral(dense, num_experts=3, top_k=2, router_std=0.05, seed=7)
    cfg, dcfg = moe.config, dense.config
    assert (cfg.num_local_experts, cfg.num_experts_per_tok) == (3, 2)
    assert cfg.router_aux_loss_coef == 1e-2 and cfg.router_jitter_noise == 0.0
    assert cfg.rope_parameters == dcfg.rope_parameters
    for name in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "rms_norm_eps", "vocab_size", "tie_word_embeddings",
                 "max_position_embeddings", "bos_token_id", "eos_token_id", "pad_token_id"):
        assert getattr(cfg, name) == getattr(dcfg, name), name
    assert cfg.head_dim == dcfg.hidden_size // dcfg.num_attention_heads
    for i, layer in enumerate(dense.model.layers):
        experts = moe.model.layers[i].mlp.experts
        assert experts.gate_up_proj.shape == (3, 2 * 48, 32)
        assert experts.down_proj.shape == (3, 32, 48)
        for e in range(3):
            gate, up = experts.gate_up_proj[e].chunk(2, dim=0)
            assert torch.equal(gate, layer.mlp.gate_proj.weight)
            assert torch.equal(up, layer.mlp.up_proj.weight)
            assert torch.equal(experts.down_proj[e], layer.mlp.down_proj.weight)
        router = moe.model.layers[i].mlp.gate.weight
        assert router.shape == (3, 32) and 0.02 < router.std().item() < 0.1
    moe_sd = moe.state_dict()
    for name, value in dense.state_dict().items():
        if ".mlp." not in name:
            assert torch.equal(moe_sd[name], value), name
    again = upcycle_to_mixtral(dense, num_experts=3, top_k=2, router_std=0.05, seed=7)
    other = upcycle_to_mixtral(dense, num_experts=3, top_k=2, router_std=0.05, seed=8)
    r = moe.model.layers[0].mlp.gate.weight
    assert torch.equal(again.model.layers[0].mlp.gate.weight, r)
    assert not torch.equal(other.model.layers[0].mlp.gate.weight, r)


def test_upcycled_loss_includes_load_balancing() -> None:
    dense = tiny_model("llama")
    moe = upcycle_to_mixtral(dense, num_experts=4, top_k=2, router_std=0.5).eval()
    ids, mask = _batch()
    labels = ids.masked_fill(mask == 0, -100)
    with torch.no_grad():
        nll = dense(ids, attention_mask=mask, labels=labels).loss
        out = moe(ids, attention_mask=mask, labels=labels, output_router_logits=True)
    lb = load_balancing_loss(out.router_logits, 4, 2, mask)
    torch.testing.assert_close(out.aux_loss, lb)
    torch.testing.assert_close(out.loss, nll + 1e-2 * lb, atol=1e-5, rtol=0)


def test_upcycle_follows_dtype() -> None:
    dense = tiny_model("llama").to(torch.bfloat16)
    moe = upcycle_to_mixtral(dense)
    assert moe.dtype == torch.bfloat16
    assert moe.model.layers[0].mlp.gate.weight.dtype == torch.bfloat16


def test_save_load_roundtrip(tmp_path) -> None:
    moe = upcycle_to_mixtral(tiny_model("llama"), top_k=2).eval()
    moe.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, MixtralForCausalLM)
    ids, mask = _batch()
    with torch.no_grad():
        assert torch.equal(moe(ids, attention_mask=mask).logits,
                           loaded(ids, attention_mask=mask).logits)


@pytest.mark.parametrize("arch", ["gpt2", "gpt_neox", "qwen2", "phi3", "gemma"])
def test_unsupported_architectures_raise(arch: str) -> None:
    model = tiny_model(arch)
    with pytest.raises(ValueError, match=repr(arch)):
        check_upcyclable(model)
    with pytest.raises(ValueError, match=repr(arch)):
        upcycle_to_mixtral(model)


def test_llama_with_biases_rejected() -> None:
    spec = dict(TINY_CONFIGS["llama"])
    config = AutoConfig.for_model(spec.pop("model_type"), attention_bias=True, **spec)
    model = AutoModelForCausalLM.from_config(config)
    with pytest.raises(ValueError, match="attention_bias"):
        upcycle_to_mixtral(model)
    assert SUPPORTED_FOR_UPCYCLING == ("llama", "mistral")


def test_bad_top_k_rejected() -> None:
    with pytest.raises(ValueError, match="top_k"):
        upcycle_to_mixtral(tiny_model("llama"), num_experts=2, top_k=3)


def test_stories260k_upcycled(stories, tmp_path) -> None:
    dense, tok = stories
    check_upcyclable(dense)
    ids = torch.randint(3, dense.config.vocab_size, (3, 32),
                        generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = dense(ids).logits
        for top_k in (1, 2):
            moe = upcycle_to_mixtral(dense, num_experts=4, top_k=top_k).eval()
            assert moe.lm_head.weight is moe.model.embed_tokens.weight  # tying kept
            # |logits| reach ~18: fp32 kernel-order noise of the fused/gathered expert matmuls
            # is ~1e-5 here (exactness is checked in fp64 below)
            assert _max_diff(want, moe(ids).logits) <= 5e-5
    tok.padding_side = "left"
    enc = tok(["Once upon a time", "The little dog"], return_tensors="pt", padding=True)
    out_d = dense.generate(**enc, max_new_tokens=12, do_sample=False)
    out_m = moe.generate(**enc, max_new_tokens=12, do_sample=False)
    assert torch.equal(out_d, out_m)
    moe.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, moe(ids).logits)
    # bf16: I=172 rows are not 16-byte aligned, so the experts fall back to the eager loop
    dense16 = AutoModelForCausalLM.from_pretrained(dense.name_or_path, dtype=torch.bfloat16).eval()
    with torch.no_grad():
        moe16 = upcycle_to_mixtral(dense16, top_k=1).eval()
        assert moe16.dtype == torch.bfloat16
        assert _max_diff(moe16(ids).logits.float(), dense16(ids).logits.float()) <= 0.1
    # exact in fp64 with top-1 (routing weight p/p == 1) and the eager expert loop
    dense64 = dense.to(torch.float64)
    moe64 = upcycle_to_mixtral(dense64, top_k=1).eval()
    moe64.set_experts_implementation("eager")
    with torch.no_grad():
        assert _max_diff(dense64(ids).logits, moe64(ids).logits) <= 1e-10


# ----------------------------------------------------------------------------- BTX


def _ffn(model, i):  # noqa: ANN001, ANN202
    mlp = model.model.layers[i].mlp
    return mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight


@pytest.mark.parametrize("include_base", [True, False])
def test_btx_merge_slots_and_average(include_base: bool) -> None:
    base = tiny_model("llama", seed=0)
    domains = [tiny_model("llama", seed=s) for s in (1, 2, 3)]
    moe = btx_merge(base, domains, top_k=2, include_base_expert=include_base)
    n_exp = 4 if include_base else 3
    assert moe.config.num_local_experts == n_exp and moe.config.num_experts_per_tok == 2
    sources = domains + ([base] if include_base else [])
    for i in range(base.config.num_hidden_layers):
        experts = moe.model.layers[i].mlp.experts
        assert experts.gate_up_proj.shape[0] == n_exp
        for e, src in enumerate(sources):
            gate, up, down = _ffn(src, i)
            assert torch.equal(experts.gate_up_proj[e], torch.cat([gate, up], dim=0))
            assert torch.equal(experts.down_proj[e], down)
    moe_sd = moe.state_dict()
    checked = 0
    for name, value in base.state_dict().items():
        if ".mlp." in name:
            continue
        mean = sum(d.state_dict()[name] for d in domains) / 3
        torch.testing.assert_close(moe_sd[name], mean, atol=1e-7, rtol=0)
        assert not torch.allclose(moe_sd[name], value)  # the base is not in the average
        checked += 1
    assert checked == 2 * 6 + 3  # per layer q/k/v/o + 2 norms; embed, final norm, lm_head


def test_btx_of_identical_copies_is_dense() -> None:
    base = tiny_model("llama")
    moe = btx_merge(base, [base, base], top_k=2).eval()
    ids, mask = _batch()
    with torch.no_grad():
        want = base(ids, attention_mask=mask).logits
        got = moe(ids, attention_mask=mask).logits
    assert _max_diff(want * mask[..., None], got * mask[..., None]) <= 1e-5


def test_btx_rejects_mismatched_models() -> None:
    with pytest.raises(ValueError, match="qwen2"):
        btx_merge(tiny_model("llama"), [tiny_model("qwen2")])
    with pytest.raises(ValueError, match="at least one"):
        btx_merge(tiny_model("llama"), [])


def test_domain_of() -> None:
    assert domain_of("Sentiment Analysis") == "classification"
    assert domain_of("Summarization", None) == "generation_rewriting"
    assert domain_of("Question Answering") == "qa_reasoning"
    assert domain_of("Named Entity Recognition") == "extraction_other"
    assert domain_of("Some New Category") == FALLBACK_DOMAIN
    assert domain_of("x", {"x": "mine"}) == "mine"
    assert domain_of("Sentiment Analysis", {"x": "mine"}) == FALLBACK_DOMAIN
    assert len(set(DEFAULT_SNI_DOMAINS.values())) == 4


def test_sni_categories_all_mapped() -> None:
    if not SNI_MINI.is_dir():
        pytest.skip(f"../shared is absent ({SNI_MINI})")
    categories = json.loads((SNI_MINI / "categories.json").read_text())
    assert set(categories.values()) <= set(DEFAULT_SNI_DOMAINS)
    train = (SNI_MINI / "splits" / "train_tasks.txt").read_text().split()
    assert {domain_of(categories[t]) for t in train} == set(DEFAULT_SNI_DOMAINS.values())


# ----------------------------------------------------------------------------- router losses

# two layers, B=2, T=3 -> 6 rows per layer, E=4 experts; no ties within a row
LOGITS = (
    torch.tensor([[2.0, 0.5, -1.0, 0.1],
                  [0.3, 1.7, 0.2, -0.4],
                  [-0.5, 0.0, 2.2, 1.1],
                  [1.0, 3.0, -2.0, 0.4],
                  [0.6, -0.3, 0.9, 2.5],
                  [-1.2, 0.8, 0.7, 0.1]]),
    torch.tensor([[0.2, -0.7, 1.4, 0.9],
                  [3.1, 0.4, -0.6, 1.0],
                  [0.0, 0.5, 0.25, -0.25],
                  [-2.0, 1.5, 1.2, 0.3],
                  [0.7, 0.6, -1.1, 2.0],
                  [1.3, -0.2, 0.35, 0.8]]),
)
MASK = torch.tensor([[1, 1, 1], [0, 1, 1]])  # row 3 (batch 1, position 0) is padding


def _softmax(row: list[float]) -> list[float]:
    m = max(row)
    ex = [math.exp(x - m) for x in row]
    return [x / sum(ex) for x in ex]


def _hand_load_balancing(top_k: int, mask: list[int] | None) -> float:
    """transformers' formula: tokens of all layers pooled; f_e = top-k assignments of e / tokens
    (sums to top_k), P_e = mean probability of e; loss = E * sum_e f_e * P_e."""
    num_experts = 4
    counts = [0.0] * num_experts
    prob_sums = [0.0] * num_experts
    tokens = 0.0
    for layer in LOGITS:
        for r, row in enumerate(layer.tolist()):
            w = 1.0 if mask is None else float(mask[r])
            probs = _softmax(row)
            chosen = sorted(range(num_experts), key=lambda e: -probs[e])[:top_k]
            for e in range(num_experts):
                prob_sums[e] += w * probs[e]
                if e in chosen:
                    counts[e] += w
            tokens += w
    f = [c / tokens for c in counts]
    p = [s / tokens for s in prob_sums]
    return num_experts * sum(f[e] * p[e] for e in range(num_experts))


def _hand_z_loss(mask: list[int] | None) -> float:
    per_layer = []
    for layer in LOGITS:
        total, n = 0.0, 0
        for r, row in enumerate(layer.tolist()):
            if mask is not None and not mask[r]:
                continue
            total += math.log(sum(math.exp(x) for x in row)) ** 2
            n += 1
        per_layer.append(total / n)
    return sum(per_layer) / len(per_layer)


@pytest.mark.parametrize("top_k", [1, 2])
@pytest.mark.parametrize("masked", [False, True])
def test_load_balancing_loss_by_hand(top_k: int, masked: bool) -> None:
    mask = MASK if masked else None
    got = load_balancing_loss(LOGITS, num_experts=4, top_k=top_k, attention_mask=mask)
    want = _hand_load_balancing(top_k, MASK.reshape(-1).tolist() if masked else None)
    assert got.item() == pytest.approx(want, rel=1e-6)
    # a list works like the tuple transformers returns; padding changes the value
    assert load_balancing_loss(list(LOGITS), 4, top_k, mask).item() == pytest.approx(want, rel=1e-6)
    if masked:
        assert want != pytest.approx(_hand_load_balancing(top_k, None), rel=1e-6)


@pytest.mark.parametrize("masked", [False, True])
def test_router_z_loss_by_hand(masked: bool) -> None:
    mask = MASK if masked else None
    got = router_z_loss(LOGITS, mask)
    want = _hand_z_loss(MASK.reshape(-1).tolist() if masked else None)
    assert got.item() == pytest.approx(want, rel=1e-6)
    if masked:
        assert want != pytest.approx(_hand_z_loss(None), rel=1e-6)
    # single tensor = one layer
    assert router_z_loss(LOGITS[0]).item() == pytest.approx(
        sum(math.log(sum(math.exp(x) for x in r)) ** 2 for r in LOGITS[0].tolist()) / 6, rel=1e-6)


def test_router_losses_differentiable_and_checked() -> None:
    logits = tuple(t.clone().requires_grad_(True) for t in LOGITS)
    (router_z_loss(logits, MASK) + load_balancing_loss(logits, 4, 2, MASK)).backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in logits)
    assert logits[0].grad[3].abs().sum() == 0  # padding row gets no gradient
    with pytest.raises(ValueError, match="attention_mask"):
        router_z_loss(LOGITS, torch.ones(2, 4))
    with pytest.raises(ValueError, match="attention_mask"):
        load_balancing_loss(LOGITS, 4, 2, torch.ones(2, 4))
    with pytest.raises(ValueError, match="output_router_logits"):
        router_z_loss(())


def test_btx_groups_the_full_sni_split_into_its_domains_not_sni_topics() -> None:
    """The full train split has categories the map lacks; their SNI topic ("Animals", ...) must
    not become a BTX expert: they go to the fallback domain."""
    from types import SimpleNamespace

    from simoe.data.records import Example
    from simoe.training.methods.btx import domains

    examples = [Example("p", "c", category="Sentiment Analysis", domain="Books"),
                Example("p", "c", category="Story Composition", domain="Animals"),
                Example("p", "c", domain="my_domain"), Example("p", "c")]
    groups = domains(SimpleNamespace(job=SimpleNamespace(domains=None), examples=examples))
    assert groups == {"classification": [0], FALLBACK_DOMAIN: [1, 3], "my_domain": [2]}
    sni = SNI_MINI.parent / "sni"
    if (sni / "categories.json").is_file():
        categories = json.loads((sni / "categories.json").read_text())
        train = (sni / "splits" / "train_tasks.txt").read_text().split()
        found = {domain_of(categories[t]) for t in train if t in categories}
        assert found <= set(DEFAULT_SNI_DOMAINS.values()) | {FALLBACK_DOMAIN}
