"""Stage 2, running cells: the runner and what one cell does, train then evaluate.

Owns the suite runner (``runner``), one cell's life (``cell_runner``), where cells run
(``executors``: processes, Ray), the shared training loop every method goes through
(``training``), held-out evaluation (``evaluation``, ``shared_eval``), data parallelism
(``distributed``), the locks on an output folder (``locks``) and live training logs
(``train_logging``).

May import: ``suite``, ``store``, ``compute`` (the ledger), the seams (``methods``, ``generators``,
``rewards``, ``prompts``, ``metrics``) through the registry, and ``errors``/``registry``.
Never ``report`` or ``commands``.
"""
