"""Corpora and synthetic long-context tasks."""
