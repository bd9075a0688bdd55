"""The embedded shapes world: prompt grammar, renderer, checker, learned reward, generator."""
