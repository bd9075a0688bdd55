"""Compute, measured and predicted: what an update costs in time, FLOPs and memory.

Owns the per-phase ledger every training update records (``ledger``), FLOP counting with the
attention formulas torch lacks on CPU (``flops``), the paper-scale architectures counted on the
meta device (``architectures``), the timing bench of real method steps (``bench``) and the
memory prediction of one training micro-batch (``memory``).

May import: the seams, ``weights``, ``store``, ``errors``/``registry``; one named exception,
``memory`` reads the training loop's own ``autocast`` (``run.training``) so that a prediction
cannot drift from what trains. Never ``report`` or ``commands``.
"""
