"""Rewards: the protocol (base.py) and one module per reward model.

May import: ``generators`` (image conversions), ``shapes``, ``weights``, ``errors``/``registry``.
"""
