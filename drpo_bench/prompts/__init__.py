"""Prompt sets: the protocol (base.py) and loaders (shapes grammar, Pick-a-Pic, Parti, ...).

May import: ``errors``/``registry`` only: every other seam may use prompts.
"""
