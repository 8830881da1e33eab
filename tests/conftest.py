"""Shared test set-up: float64 is enabled so finite-difference checks are meaningful."""

import jax

jax.config.update("jax_enable_x64", True)
