"""pricegpt: market prices as a language."""
__version__ = "0.1.0"
