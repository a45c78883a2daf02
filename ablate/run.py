"""Entry point for `ray submit cluster/gpu.yaml ablate/run.py --spec tune_specs/full_grid.yaml`.

`ray submit` copies this file alone to the head node and runs `python ~/run.py ARGS`, so it only
imports the installed `ablate` package (installed on every node by cluster/gpu.yaml) and never
relies on where it sits. A relative --spec is looked up in the working directory, then in the
installed project. All `ablate sweep` flags work: --resume, --tracking-uri, --storage-path, --dry-run.
It runs on the head node, so it joins the running cluster (`--ray-address auto`; a later flag wins).
"""

import sys

from ablate.cli import main

if __name__ == "__main__":
    sys.exit(main(["sweep", "--ray-address", "auto", *sys.argv[1:]]))
