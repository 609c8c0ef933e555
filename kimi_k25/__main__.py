import sys

from kimi_k25.cli import main

sys.exit(main())
