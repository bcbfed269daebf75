"""The ranker's feature rows, appended one part of the users at a time.

In memory the parts are joined into one array. Over user shards no process should hold every
candidate's features (20 floats a row, ~150 rows a user): the parts are written one after the
other to a file on local disk and read back as a read-only memory map, which the boosters read
by rows (:func:`recmodel.ranker.crossfit.cross_fit` reads it in blocks of rows).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from types import TracebackType

import numpy as np

FLOAT = np.float32


class FeatureRows:
    """float32 rows of ``n_columns`` features, appended part by part (a context manager: the
    file of ``on_disk`` rows lives inside it).

    Args:
        n_columns: features per row.
        on_disk: write the rows to a file in ``directory`` (the system's temporary directory
            when None) instead of keeping them in memory.
    """

    def __init__(self, n_columns: int, *, on_disk: bool, directory: str | None = None):
        self.n_columns = n_columns
        self.on_disk = on_disk
        self.directory = directory
        self.n_rows = 0
        self._blocks: list[np.ndarray] = []
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._file = None
        self._path: Path | None = None

    def __enter__(self) -> FeatureRows:
        if self.on_disk:
            self._tmp = tempfile.TemporaryDirectory(prefix="recmodel-ranker-", dir=self.directory)
            self._path = Path(self._tmp.name) / "features.f32"
            self._file = self._path.open("wb")
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if self._file is not None:
            self._file.close()
        if self._tmp is not None:
            self._tmp.cleanup()

    def append(self, block: np.ndarray) -> None:
        """Add ``block [n, n_columns]`` after the rows so far."""
        block = np.ascontiguousarray(block, dtype=FLOAT)
        if block.ndim != 2 or block.shape[1] != self.n_columns:
            raise ValueError(f"feature rows must be [n, {self.n_columns}], got {block.shape}")
        if self.on_disk:
            if self._file is None:
                raise RuntimeError("FeatureRows on disk are written inside its with-block")
            self._file.write(block.tobytes())
        else:
            self._blocks.append(block)
        self.n_rows += len(block)

    def array(self) -> np.ndarray:
        """Every row so far, ``[n_rows, n_columns]``: an array, or a read-only map of the file
        (valid inside the with-block)."""
        if not self.on_disk:
            if not self._blocks:
                return np.zeros((0, self.n_columns), dtype=FLOAT)
            return np.concatenate(self._blocks) if len(self._blocks) > 1 else self._blocks[0]
        self._file.flush()
        if self.n_rows == 0:
            return np.zeros((0, self.n_columns), dtype=FLOAT)
        return np.memmap(self._path, dtype=FLOAT, mode="r", shape=(self.n_rows, self.n_columns))
