"""`python -m pipeline` == the `pipeline` console script."""
import sys

from pipeline.cli import main

sys.exit(main())
