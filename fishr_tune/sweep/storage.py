"""Where a sweep lives: a local directory, or a URI (s3://, gs://, file://) that every node of a cluster reaches.

Ray Tune reads and writes trial checkpoints there itself; this module covers the few files of our own (the
spec snapshot and the summary) through pyarrow's filesystems, and picks a driver-local directory for the
MLflow journal, which only the driver writes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

LOCAL_STATE_ROOT = Path.home() / ".cache" / "fishr-tune" / "sweeps"
JOURNAL_DIR = "mlflow"  # the MLflow journal's directory name (fishr_tune.tracking.journal)


def is_uri(path: str) -> bool:
    return "://" in path


@dataclass(frozen=True)
class SweepLocation:
    storage_path: str  # what Tune's RunConfig gets: an absolute local path or a URI
    name: str

    @classmethod
    def of(cls, storage_path: str, name: str) -> SweepLocation:
        root = storage_path.rstrip("/") if is_uri(storage_path) else str(Path(storage_path).expanduser().resolve())
        return cls(root, name)

    @property
    def uri(self) -> str:
        """The experiment directory (Tuner.restore and Tuner.can_restore take it)."""
        return f"{self.storage_path}/{self.name}"

    @property
    def remote(self) -> bool:
        return is_uri(self.storage_path) and not self.storage_path.startswith("file://")

    @property
    def journal_dir(self) -> Path:
        """The MLflow journal: in the experiment directory when it is local, else in a driver-local cache."""
        if not is_uri(self.storage_path):
            return Path(self.uri) / JOURNAL_DIR
        digest = hashlib.sha256(self.uri.encode()).hexdigest()[:12]
        return LOCAL_STATE_ROOT / f"{self.name}-{digest}" / JOURNAL_DIR

    def _filesystem(self):  # noqa: ANN202  (pyarrow.fs.FileSystem, base path)
        import pyarrow.fs

        if is_uri(self.uri):
            return pyarrow.fs.FileSystem.from_uri(self.uri)
        return pyarrow.fs.LocalFileSystem(), self.uri

    def write_text(self, filename: str, text: str) -> None:
        filesystem, base = self._filesystem()
        filesystem.create_dir(base, recursive=True)
        with filesystem.open_output_stream(f"{base}/{filename}") as stream:
            stream.write(text.encode("utf-8"))

    def read_text(self, filename: str) -> str | None:
        data = self.read_bytes(filename)
        return None if data is None else data.decode("utf-8")

    def read_bytes(self, filename: str) -> bytes | None:
        import pyarrow.fs

        filesystem, base = self._filesystem()
        path = f"{base}/{filename}"
        if filesystem.get_file_info(path).type == pyarrow.fs.FileType.NotFound:
            return None
        with filesystem.open_input_stream(path) as stream:
            return bytes(stream.read())

    def list_files(self, suffix: str = "") -> list[str]:
        """Names of the files directly in the experiment directory that end with `suffix` (none if it is absent)."""
        import pyarrow.fs

        filesystem, base = self._filesystem()
        if filesystem.get_file_info(base).type != pyarrow.fs.FileType.Directory:
            return []
        found = filesystem.get_file_info(pyarrow.fs.FileSelector(base))
        return sorted(info.base_name for info in found
                      if info.type == pyarrow.fs.FileType.File and info.base_name.endswith(suffix))
