"""Evaluators with ``reset() / process(inputs, outputs) / evaluate() -> dict``."""
