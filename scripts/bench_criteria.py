#!/usr/bin/env python
"""Benchmark (not a test) of the criteria against fairseq's LS: see labo_fairseq/bench/criteria.py.

  python scripts/bench_criteria.py --device cuda --tokens 4096 16384 --vocab 10000 40000
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from labo_fairseq.bench.criteria import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
