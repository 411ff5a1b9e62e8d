"""Stage 7, evaluate: which benchmark categories changed (T), which MNEME and its
baselines predicted (P), the metrics between them, the live view the Side effects page
recomputes, and causal confirmation of a prediction by ablating its latents.
"""
