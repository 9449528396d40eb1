import sys

from omibuild.runtime.server import main

sys.exit(main())
