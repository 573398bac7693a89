"""Baselines built by model surgery on transformers models: sparse upcycling and BTX (both as
``MixtralForCausalLM``) and the router losses used to train them. Training them is
``simoe.training.methods``'s job; nothing here imports the training side."""

from .btx import DEFAULT_SNI_DOMAINS, FALLBACK_DOMAIN, btx_merge, domain_of
from .moe_losses import ROUTER_Z_LOSS_COEF, load_balancing_loss, router_z_loss
from .upcycle import SUPPORTED_FOR_UPCYCLING, check_upcyclable, upcycle_to_mixtral

__all__ = [
    "DEFAULT_SNI_DOMAINS",
    "FALLBACK_DOMAIN",
    "ROUTER_Z_LOSS_COEF",
    "SUPPORTED_FOR_UPCYCLING",
    "btx_merge",
    "check_upcyclable",
    "domain_of",
    "load_balancing_loss",
    "router_z_loss",
    "upcycle_to_mixtral",
]
