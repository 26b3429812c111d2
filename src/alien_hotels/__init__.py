from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("alien-hotels")
except (
    PackageNotFoundError
):  # run from a source tree (the Docker image mounts src/, see Dockerfile)
    __version__ = "0+source"
