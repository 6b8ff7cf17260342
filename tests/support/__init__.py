"""Test-only helpers: loopback stub teachers, a trained synthesis teacher, planted data.

Benchmarks import them too (from the repo root); nothing under ``llmvm_ray`` may.
"""
