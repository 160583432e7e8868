"""Generate portraits from a per-user config: `python run_inference.py --config configs/<user>.yaml`.

Same options as `facechain generate` (every config field is also a flag, e.g. `--num-images 6`).
"""

import sys

from facechain.cli import main

if __name__ == "__main__":
    sys.exit(main(["generate", *sys.argv[1:]]))
