"""Memory layers: product-key memory (PKM, Memory+) and Titans neural long-term memory."""
