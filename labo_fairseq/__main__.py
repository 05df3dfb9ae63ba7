"""``python -m labo_fairseq COMMAND ...`` is ``labo-fairseq COMMAND ...`` (see :mod:`labo_fairseq.cli`)."""

import sys

from labo_fairseq.cli import main

if __name__ == "__main__":
    sys.exit(main())
