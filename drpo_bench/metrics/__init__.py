"""Evaluation metrics: the protocol (base.py), reward-as-metric, diversity, FID/KID.

May import: ``drpo`` (feature encoders), ``rewards``, ``shapes``, ``errors``/``registry``.
"""
