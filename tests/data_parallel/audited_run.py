"""`drpo-bench` as a torchrun worker that records what a rank > 0 writes under the output folder.

Usage (tests/test_data_parallel.py): ``torchrun --nproc_per_node 2 audited_run.py run SUITE --output OUT``
with ``DP_AUDIT_LOG`` naming a file outside OUT. Every write-like event (``open`` for writing,
mkdir, rename/replace, remove, rmdir, truncate) a rank > 0 makes under OUT is appended there.
"""

import os
import sys
from pathlib import Path


def _watch(out: Path, log: Path) -> None:
    out = out.resolve()
    events = {"os.mkdir", "os.rename", "os.remove", "os.rmdir", "os.truncate", "shutil.rmtree", "os.symlink", "os.link"}

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            writes = (mode is not None and any(c in str(mode) for c in "wax+")) or (
                isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
            if not writes:
                return
        elif event not in events:
            return
        else:
            path = args[0] if args else None
        if not isinstance(path, (str, bytes, os.PathLike)):
            return
        try:
            target = Path(os.fsdecode(path)).resolve()
        except (OSError, ValueError):
            return
        if target == out or out in target.parents:
            with open(log, "a") as f:  # outside OUT: not recorded (and the hook sees it, harmlessly)
                f.write(f"{event} {target}\n")

    sys.addaudithook(hook)


if __name__ == "__main__":
    argv = sys.argv[1:]
    if int(os.environ.get("RANK", "0")) > 0 and os.environ.get("DP_AUDIT_LOG"):
        _watch(Path(argv[argv.index("--output") + 1]), Path(os.environ["DP_AUDIT_LOG"]))
    from drpo_bench.commands.main import main

    sys.exit(main(argv))
