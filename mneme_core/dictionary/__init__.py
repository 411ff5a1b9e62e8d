"""Stage 2, train: the BatchTopK cross-coder over both models' activations, its training
loop with checkpoints, planted synthetic data to test it on, and conversion to and from
other formats (dictionary_learning) and the hub.
"""
