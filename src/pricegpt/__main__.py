"""`python -m pricegpt ...` is the `pricegpt` command (and what `torchrun -m pricegpt train ...` runs)."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
