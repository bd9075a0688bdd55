"""Comparison methods, one file each. Every module here is imported by the registry.

To add a baseline: copy ``raft.py``, change the docstring (name the paper and link it), the
``Config`` (a one-line reason per default) and ``step``, and register it under a new name.

May import: the seams of ``drpo_bench`` (``methods``, ``generators``, ``rewards``, ...) and
``errors``/``registry``; not ``run``, ``report`` or ``commands`` (tests/test_layout.py), save the one
named exception: VGG-Flow reads the data-parallel ranks from ``drpo_bench.run.distributed``.
"""
