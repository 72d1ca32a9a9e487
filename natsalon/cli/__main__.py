import sys

from natsalon.cli import main

sys.exit(main())
