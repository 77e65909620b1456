"""The on-disk teacher-signal store: manifest, atomic shard writer, verifying reader."""

from kdistill.cache.manifest import FORMAT_VERSION, Manifest, StoreError
from kdistill.cache.reader import StoreReader
from kdistill.cache.writer import WriteReport, dense_rows, write_store

__all__ = [
    "FORMAT_VERSION",
    "Manifest",
    "StoreError",
    "StoreReader",
    "WriteReport",
    "dense_rows",
    "write_store",
]
