"""DrPO: the drift field (field.py), feature encoders (features*.py) and the training step (method.py)."""
