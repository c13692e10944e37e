import sys

from mglrud.cli import main

sys.exit(main())
