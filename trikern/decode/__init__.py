"""Decoding loops: AR, block diffusion, linear and quadratic self-speculation on one KV cache."""
