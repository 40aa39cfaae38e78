"""Evaluation: one module per suite (perplexity, instructions, degeneration, language, safety, the harness, the
judge), the sets they read, and the `evaluate` stage that runs them all on a candidate (stage.py)."""
