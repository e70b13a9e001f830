"""`python -m service`: the server (see service.runtime.server)."""

import sys

from service.runtime.server import main

sys.exit(main())
