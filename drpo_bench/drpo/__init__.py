"""DrPO: the drift field (field.py), feature encoders (features*.py) and the training step (method.py).

May import: ``methods`` (the contract it implements), ``generators``, ``rewards``, ``shapes`` (the
shapes encoder), ``weights``, ``errors``/``registry``.
"""
