import sys

from superres.cli import main

sys.exit(main())
