"""Average the weights of checkpoints into one that translate.py loads:
`python scripts/average_checkpoints.py RUN/checkpoints/step_*.pt --output RUN/checkpoints/averaged.pt`."""

import sys

from mt.commands.average_checkpoints import main

if __name__ == "__main__":
    sys.exit(main())
