"""Helpers every layer may use: atomic writes, the typed study config, errors, the hub
client, LanceDB access, sentence embeddings and the per-latent parquet reader.

Nothing here imports another part of ``mneme_core``; a module belongs here when two or more
stages need it and it knows nothing about any stage.
"""
