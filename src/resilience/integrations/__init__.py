"""Adapters that put other libraries' objects into a `resilience` pipeline."""
