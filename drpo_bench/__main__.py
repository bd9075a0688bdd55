"""`python -m drpo_bench ...` = the `drpo-bench` command."""

import sys

from drpo_bench.cli import main

sys.exit(main())
