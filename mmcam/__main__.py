"""``python -m mmcam``: the same as the ``mmcam`` command."""

import sys

from mmcam.cli import main

if __name__ == "__main__":
    sys.exit(main())
