#!/usr/bin/env python3
"""rest-tune command line: REST (reweighted sparse training) studies on Ray Tune.

Run `python tune_search.py --help`; the same command is installed as `rest-tune`.
"""

import sys

from rest.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
