"""``python -m dhvc_ext ...`` is the ``dhvc`` command (``dhvc_ext.cli``)."""
import sys

from dhvc_ext.cli import main

if __name__ == "__main__":
    sys.exit(main())
