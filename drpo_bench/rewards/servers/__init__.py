"""Server-side adapters for rewards that live in their own Python environment.

Each module here imports its reward's own package at the top (``hpsv3``, ``ImageReward``), so it
is importable only where that package is installed: install drpo-bench and the reward's package
in a separate environment, run ``drpo-bench serve-reward NAME --port P`` there, and use the
``remote`` reward (``url: http://127.0.0.1:P``) in the training environment. This package's
``__init__`` imports nothing, so the registry's auto-discovery never touches the adapters.
"""
