"""Attention implementations: the XLA reference (oracle)."""

from memjax.attention.reference import attend, causal_mask

__all__ = ["attend", "causal_mask"]
