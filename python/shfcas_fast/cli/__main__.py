"""``python -m shfcas_fast.cli``: the same as the ``shfcas`` console script."""

from . import main

main()
