import sys

from ribsr.cli import main

sys.exit(main())
