"""A cluster launcher's stand-in (what `srun` or a JobSet does) for the tests: `python local_nodes.py N COMMAND...`
runs COMMAND as N processes on this host, each one node, waits for all and exits with the first failure's status."""
from __future__ import annotations

import subprocess
import sys


def main() -> int:
    """Start the nodes, wait for every one; 0 when all succeeded."""
    nodes, command = int(sys.argv[1]), sys.argv[2:]
    processes = [subprocess.Popen(command) for _ in range(nodes)]
    return next((code for code in [process.wait() for process in processes] if code), 0)


if __name__ == "__main__":
    sys.exit(main())
