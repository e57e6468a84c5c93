"""Components of isovol that know nothing about clusters: volume I/O, block geometry, methods."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("isovol")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
