"""Evaluation: policy x budget harness, perplexity under budget, reports."""
