"""`memjax reproduce NAME [--small]`: every ablation in experiments/ with one command.

    from memjax import reproduce
    reproduce.ABLATIONS                       # name -> Ablation (what it compares, its steps)
    reproduce.reproduce("sweep", small=True)  # writes experiments/results/small/sweep.*
"""

from memjax.reproduce.registry import ABLATIONS, Ablation, Step, get_ablation
from memjax.reproduce.runner import ReproduceError, manifest_path, output_dir, reproduce

__all__ = ["ABLATIONS", "Ablation", "ReproduceError", "Step", "get_ablation", "manifest_path",
           "output_dir", "reproduce"]
