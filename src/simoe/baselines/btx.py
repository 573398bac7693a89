"""Branch-Train-MiX (Sukhbaatar et al., 2024): dense copies of the base model are trained on
domain subsets (the *branches*; not done here), then mixed into one ``MixtralForCausalLM`` whose
experts are the branches' FFNs (plus the base FFN) and whose other weights are averaged.

The conversion uses the same code path as sparse upcycling (``upcycle.build_mixtral``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor
from transformers import MixtralForCausalLM, PreTrainedModel

from .upcycle import build_mixtral, check_upcyclable, non_ffn_state

FALLBACK_DOMAIN = "extraction_other"
"""Domain of categories that the map does not know."""

_SNI_GROUPS: dict[str, tuple[str, ...]] = {
    # label prediction from a small, fixed set of classes
    "classification": (
        "Answerability Classification", "Cause Effect Classification",
        "Coherence Classification", "Commonsense Classification", "Dialogue Act Recognition",
        "Irony Detection", "Linguistic Probing", "Negotiation Strategy Detection",
        "Question Understanding", "Sentiment Analysis", "Spam Classification",
        "Stereotype Detection", "Text Categorization", "Text Matching", "Textual Entailment",
        "Toxic Language Detection",
    ),
    # free-form text produced from / rewritten from the input
    "generation_rewriting": (
        "Data to Text", "Grammar Error Correction", "Paraphrasing", "Question Generation",
        "Question Rewriting", "Sentence Composition", "Sentence Compression",
        "Sentence Perturbation", "Summarization", "Text Simplification", "Title Generation",
        "Wrong Candidate Generation",
    ),
    # answering, knowledge, arithmetic/symbolic and commonsense reasoning
    "qa_reasoning": (
        "Coreference Resolution", "Fill in The Blank", "Mathematics", "Misc.",
        "Preposition Prediction", "Program Execution", "Question Answering", "Sentence Ordering",
        "Word Analogy", "Word Semantics",
    ),
    # spans or keywords copied out of the input, and anything unknown
    "extraction_other": (
        "Information Extraction", "Keyword Tagging", "Named Entity Recognition",
        "Overlap Extraction",
    ),
}

DEFAULT_SNI_DOMAINS: dict[str, str] = {
    category: domain for domain, categories in _SNI_GROUPS.items() for category in categories
}
"""SNI task category -> one of four BTX domains (covers the sni-mini train and test categories);
unknown categories go to ``FALLBACK_DOMAIN``."""


def domain_of(example_category: str, domain_map: Mapping[str, str] | None = None) -> str:
    """The BTX domain of an SNI task category (``DEFAULT_SNI_DOMAINS`` when ``domain_map`` is
    None); ``FALLBACK_DOMAIN`` for categories the map does not contain."""
    mapping = DEFAULT_SNI_DOMAINS if domain_map is None else domain_map
    return mapping.get(example_category, FALLBACK_DOMAIN)


def _check_compatible(base: PreTrainedModel, models: Sequence[PreTrainedModel]) -> None:
    ref = {k: (v.shape, v.dtype) for k, v in base.state_dict().items()}
    for i, m in enumerate(models):
        if m.config.model_type != base.config.model_type:
            raise ValueError(f"domain model {i} is {m.config.model_type!r}, "
                             f"the base is {base.config.model_type!r}")
        got = {k: (v.shape, v.dtype) for k, v in m.state_dict().items()}
        if got != ref:
            diff = sorted(set(got.items()) ^ set(ref.items()))[:3]
            raise ValueError(f"domain model {i} does not match the base's weights: {diff}")


def average_state(states: Sequence[Mapping[str, Tensor]]) -> dict[str, Tensor]:
    """Element-wise mean of same-keyed state dicts, accumulated in fp32 (or fp64 for fp64
    inputs) and cast back to each tensor's dtype."""
    out = {}
    for key, first in states[0].items():
        acc_dtype = torch.float64 if first.dtype == torch.float64 else torch.float32
        acc = torch.zeros_like(first, dtype=acc_dtype)
        for s in states:
            acc += s[key].to(acc.device, acc_dtype)
        out[key] = (acc / len(states)).to(first.dtype)
    return out


def btx_merge(
    base: PreTrainedModel,
    domain_models: Sequence[PreTrainedModel],
    top_k: int = 2,
    router_std: float = 0.02,
    seed: int = 0,
    include_base_expert: bool = True,
) -> MixtralForCausalLM:
    """The MiX step of BTX: a ``MixtralForCausalLM`` with one expert per domain model (its FFN,
    in ``domain_models`` order) and, when ``include_base_expert``, the base model's FFN as the
    last expert (as in BTX and the SIMoE paper's appendix B.1).

    Non-FFN weights (embeddings, attention, norms, lm_head) are the element-wise mean over the
    *domain models only*, as in BTX, which averages the branches' remaining parameters: the base
    is where every branch started, so adding it to the mean would only pull the merge back
    towards the untrained weights; it enters the model through its FFN expert. Router weights
    are N(0, router_std^2) with a ``seed``-ed generator, as in ``upcycle_to_mixtral``; the config
    (shapes, RoPE, tying, dtype) is the base's. All models must share the base's architecture.
    """
    domain_models = list(domain_models)
    if not domain_models:
        raise ValueError("btx_merge needs at least one domain model")
    check_upcyclable(base)
    _check_compatible(base, domain_models)
    experts = domain_models + ([base] if include_base_expert else [])
    averaged = average_state([non_ffn_state(m) for m in domain_models])
    return build_mixtral(base, averaged, experts, top_k, router_std=router_std, seed=seed)


__all__ = [
    "DEFAULT_SNI_DOMAINS",
    "FALLBACK_DOMAIN",
    "average_state",
    "btx_merge",
    "domain_of",
]
