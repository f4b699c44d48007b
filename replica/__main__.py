import sys

from replica.main import main

sys.exit(main())
