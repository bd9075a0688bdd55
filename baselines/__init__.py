"""Comparison methods, one file each. Every module here is imported by the registry.

To add a baseline: copy ``raft.py``, change the docstring (name the paper and link it), the
``Config`` (a one-line reason per default) and ``step``, and register it under a new name.
"""
