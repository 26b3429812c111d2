import os

# OpenMP worker threads (scikit-learn's and openTSNE's libgomp) sleep between parallel regions
# instead of spinning: libgomp reads this once, when loaded (`import sklearn`). A user's value wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("alien-hotels")
except (
    PackageNotFoundError
):  # run from a source tree (the Docker image mounts src/, see Dockerfile)
    __version__ = "0+source"
