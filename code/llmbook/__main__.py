import sys

from llmbook.cli import main

sys.exit(main())
