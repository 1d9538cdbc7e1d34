import sys

from watchkeep.cli import main

sys.exit(main())
