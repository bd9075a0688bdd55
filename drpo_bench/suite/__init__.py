"""Stage 1, the suite: what to run and how a cell is named.

Owns the suite schema (``config``), strict YAML reading (``yaml_strict``), the expansion of a
suite into cells (``planning``), a cell's code identity (``code_hash``) and the records of a
tuning run that a suite may point at (``tuning_records``).

May import: ``errors``, ``registry``, ``store``. Nothing here builds a model or runs a cell.
"""
