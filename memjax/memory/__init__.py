"""Memory layers: product-key memory (PKM, Memory+) and Titans neural long-term memory.

Importing the package registers the memory blocks with the decoder (`memjax.memory.decoder`).
"""

from memjax.memory import decoder

__all__ = ["decoder"]
