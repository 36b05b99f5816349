import sys

from enet_serve.cli import main

sys.exit(main())
