"""One-step generators: the protocol (base.py) and one module per family.

May import: ``shapes`` (the shapes generator's network), ``weights``, ``store``, ``errors``/``registry``.
"""
