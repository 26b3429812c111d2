from importlib.metadata import version

__version__ = version("alien-hotels")
