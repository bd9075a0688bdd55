"""`python -m drpo_bench ...` = the `drpo-bench` command."""

import sys

from drpo_bench.commands.main import main

sys.exit(main())
