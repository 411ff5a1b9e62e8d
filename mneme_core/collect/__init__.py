"""Stage 1, collect: load the base and fine-tuned models (a folder, a delta, an adapter),
stream the neutral corpus, and write paired residual-stream activations to shards.
"""
