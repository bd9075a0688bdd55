"""Evaluation metrics: the protocol (base.py), reward-as-metric, diversity, FID/KID."""
