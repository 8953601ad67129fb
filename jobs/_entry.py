"""Shared by the spark-submit entry points: run one recaug command with the submitter's master."""

from __future__ import annotations

import os
import sys


def submit(command: str) -> None:
    """Run ``recaug <command> <argv>`` using the master and resources that spark-submit set.

    ``spark.master=submit`` goes first so that a config file's master (e.g. local[*] in
    conf/local.yaml) cannot override ``spark-submit --master``; an explicit ``--set spark.master=``
    from the command line still wins.
    """
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from recaug_spark.cli import main

    main([command, "--set", "spark.master=submit", *sys.argv[1:]], prog_name=f"jobs/{command}.py")
