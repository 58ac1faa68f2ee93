"""Sweeps: the engine generates experiments itself (Optuna inside)."""
