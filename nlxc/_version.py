"""The version of nlxc (also in pyproject.toml), at the bottom of the layers so that any
module may record it (e.g. in the HDF5 files of `nlxc.data`)."""

__version__ = "0.1.0"
