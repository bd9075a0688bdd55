"""Prompt sets: the protocol (base.py) and loaders (shapes grammar, Pick-a-Pic, Parti, ...)."""
