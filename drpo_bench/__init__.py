"""drpo-bench: preference finetuning of one-step text-to-image generators, measured."""

__version__ = "0.1.0"
