"""simoe: Sparse Interpolated Mixture-of-Experts for Hugging Face causal LMs (ACL 2025)."""

from .config import SIMoEConfig
from .model import SIMoECausalLMOutput, SIMoEModel

__all__ = ["SIMoEConfig", "SIMoEModel", "SIMoECausalLMOutput"]
__version__ = "0.1.0"
