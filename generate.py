"""The seed's command: `./run.sh generate.py --seed_tokens "80 81 83 89 66" --num_generate 50 [--run RUN]`.

A thin wrapper over `pricegpt generate`; without --run it uses the most recent run under runs/.
Prints one line of generated token ids per sample.
"""

import sys

from pricegpt.cli import main

if __name__ == "__main__":
    sys.exit(main(["generate", *sys.argv[1:]]))
