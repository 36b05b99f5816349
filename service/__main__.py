"""`python -m enet_serve.service [flags]`: the same as `enet-serve serve [flags]`."""
import sys

from enet_serve.service.cli import main

sys.exit(main())
