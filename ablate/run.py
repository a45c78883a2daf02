"""Entry point for `ray submit cluster/gpu.yaml ablate/run.py --spec tune_specs/full_grid.yaml`.

`ray submit` copies this file alone to the head node and runs `python ~/run.py ARGS`, so it only
imports the installed `ablate` package (installed on every node by cluster/gpu.yaml) and never
relies on where it sits. A relative --spec is looked up in the working directory, then in the
installed project. All `ablate sweep` flags work: --resume, --tracking-uri, --storage-path, --dry-run.
"""

import sys

from ablate.cli import main

if __name__ == "__main__":
    sys.exit(main(["sweep", *sys.argv[1:]]))
