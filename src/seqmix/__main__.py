import sys

from seqmix.cli import main

sys.exit(main())
