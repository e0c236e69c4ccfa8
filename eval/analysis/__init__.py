"""Analyses of the method on a trained model, beside the benchmark scores: noise_auroc.py."""
