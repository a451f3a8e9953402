"""memjax: memory-bounded attention in JAX.

    import memjax
    lm = memjax.load("smollm2-135m")
    lm.generate("Once upon a time", policy="streaming", budget=256)
"""

from memjax.lm import LanguageModel, load, policies

__version__ = "0.1.0"

__all__ = ["LanguageModel", "load", "policies", "__version__"]
