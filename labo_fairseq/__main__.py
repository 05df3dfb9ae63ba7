"""``python -m labo_fairseq user-dir`` prints the directory to pass as ``--user-dir`` (useful after
``pip install``, when the working directory is not the repository)."""

import os
import sys

if __name__ == "__main__":
    if sys.argv[1:] != ["user-dir"]:
        sys.exit("usage: python -m labo_fairseq user-dir")
    print(os.path.dirname(os.path.abspath(__file__)))
