"""The `pricegpt` command line: `main.py` parses flags, `commands.py` maps them to library calls, `text.py` formats
what the library returns. The only part of pricegpt that prints."""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
