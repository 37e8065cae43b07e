"""`python -m mpu.cli …` runs the `mpu` command (the form tests and scripts use)."""

import sys

from mpu.cli import main

sys.exit(main())
