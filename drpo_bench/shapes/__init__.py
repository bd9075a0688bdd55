"""The embedded shapes world: prompt grammar, renderer, checker, learned reward, generator.

May import: ``prompts``, ``store`` (atomic weight files), ``errors``/``registry``.
"""
