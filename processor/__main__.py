"""Entry point for ``python -m processor`` and ``spark-submit processor/__main__.py``."""

from processor.cli import app

if __name__ == "__main__":
    app()
