"""nnzoo's pipeline: the ``nnzoo`` command line and the API under it."""

__version__ = "0.1.0"
