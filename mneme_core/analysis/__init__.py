"""Stages 3–4 and the tools beside them: latent scaling (β, amplified / suppressed),
top-activating contexts, activation differences without a dictionary, latent ablation
hooks and the prompt lab.
"""
