"""One-step generators: the protocol (base.py) and one module per family."""
