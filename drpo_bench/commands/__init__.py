"""The ``drpo-bench`` commands: one module per command, the parser and dispatch in ``main``.

``run``, ``validate``, ``ls``, ``report``, ``sample``, ``flops`` (with ``bench``),
``memory_plan`` (``plan``), ``serve`` (``serve-reward``), ``make_dataset``, ``tune``; ``common``
holds what they share (the stderr console, ``key=value`` overrides, the usage examples).

May import every stage; nothing in the package imports a command. Cells' code hashes never
follow a command's imports (``suite.code_hash.EXCLUDED``).
"""
