"""`python -m service [flags]`: the same as `enet-serve serve [flags]`."""
import sys

from service.cli import main

sys.exit(main())
