"""TRIM-KV learned retention gates: gates, decayed attention, capacity, gated model, loss."""

from memjax.retention.capacity import capacity_loss, capacity_sums
from memjax.retention.decayed_attention import decayed_attention
from memjax.retention.gate import add_gates, init_gate_params, log_beta, split_gates
from memjax.retention.losses import trimkv_loss
from memjax.retention.model import forward_gated

__all__ = ["add_gates", "capacity_loss", "capacity_sums", "decayed_attention", "forward_gated",
           "init_gate_params", "log_beta", "split_gates", "trimkv_loss"]
