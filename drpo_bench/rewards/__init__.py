"""Rewards: the protocol (base.py) and one module per reward model."""
