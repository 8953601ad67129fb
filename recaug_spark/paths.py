"""Local paths and URIs: the one place that decides which is which.

A location is a **URI** when it has a scheme (``s3a://bucket/wh``, ``file:///tmp/wh``), else a
local path. A **remote** location is a URI on another filesystem than the local one (any scheme but
``file``). Standard library only, so that executors and the trainer can import it cheaply.
"""

from __future__ import annotations

import os
from urllib.parse import unquote, urlparse

FILE_SCHEME = "file://"


def is_uri(location: str | os.PathLike) -> bool:
    """True for ``scheme://...`` (``file://`` included), false for a plain path."""
    return "://" in str(location)


def is_remote(location: str | os.PathLike) -> bool:
    """True for a URI that is not a ``file://`` one (``s3a://``, ``hdfs://``, ``abfss://``...)."""
    return is_uri(location) and not str(location).startswith(FILE_SCHEME)


def local_path(location: str | os.PathLike) -> str:
    """A ``file://`` URI as the path it names (``file:///tmp/wh`` → ``/tmp/wh``); anything else unchanged."""
    return str(location).removeprefix(FILE_SCHEME)


def file_uri(location: str) -> str:
    """A local path as a ``file://`` URI (what Spark's readers and writers are given); a URI unchanged."""
    return location if is_uri(location) else f"{FILE_SCHEME}{location}"


def decoded_path(uri: str) -> str:
    """A file URI as Spark reports it (``file:/a%20b/c``) → the path on its filesystem (``/a b/c``).

    Any other location is returned unchanged.
    """
    return unquote(urlparse(uri).path) if uri.startswith("file:") else uri
