"""Training tri-mode checkpoints: the joint AR + block-diffusion objective (SPEC §6), stdlib data,
byte-level BPE, a resumable CPU/GPU trainer and export to the Hugging Face folder layout.

Entry point: `python -m trikern.train --help`.
"""
