"""Two-stage transformer retriever for music recommendations."""

__version__ = "0.1.0"
