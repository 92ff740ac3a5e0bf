"""What every artifact class shares: a handle on one step output folder, its atomic write, and checked reads.

A handle is a path-like object (`os.fspath(handle)` is its folder), so it goes wherever a folder path
goes; what is inside the folder is known only to its class. A missing file or column is reported naming
the artifact, its folder, the file and the step that writes it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from sidreasoner.io import atomic_dir, atomic_file, read_json, write_json

# The KFP artifact types an output can have (named here: the library never imports kfp).
KfpType = Literal["Dataset", "Model", "Metrics", "HTML", "Markdown"]

A = TypeVar("A", bound="Artifact")


class ArtifactFileMissing(FileNotFoundError):
    """A file an artifact must hold is not there; the message names the artifact, the file and its writer."""


class ArtifactSchemaError(ValueError):
    """A file of an artifact lacks a column or key its readers need; the message names artifact, file and field."""


class Artifact(os.PathLike):
    """One step output folder. Subclasses name their files (class constants), read and write them."""

    kind: ClassVar[str] = "artifact"  # how messages name it: "dataset", "SID index", ...
    kfp_type: ClassVar[KfpType] = "Dataset"
    writer: ClassVar[str] = ""  # the step(s) that write it, for messages

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __fspath__(self) -> str:
        return str(self.path)

    __str__ = __fspath__  # in messages and f-strings a handle reads as its folder, as a Path does

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.path == self.path

    def __hash__(self) -> int:
        return hash((type(self), self.path))

    @classmethod
    def at(cls: type[A], folder: str | os.PathLike) -> A:
        """`folder` as a handle of this class (a handle of it is returned as is)."""
        return folder if isinstance(folder, cls) else cls(folder)

    @classmethod
    @contextlib.contextmanager
    def writing(cls: type[A], final: str | os.PathLike) -> Iterator[A]:
        """A handle on a temp folder beside `final`, renamed to `final` when the block ends without error."""
        with atomic_dir(final) as tmp:
            yield cls(tmp)

    # ------------------------------------------------------------ files

    def file(self, name: str) -> Path:
        """The path of file `name` in this folder, whether or not it exists yet."""
        return self.path / name

    def has(self, name: str) -> bool:
        return self.file(name).exists()

    def require(self, name: str, what: str = "") -> Path:
        """The path of file `name`, which must exist."""
        path = self.file(name)
        if not path.exists():
            about = f" ({what})" if what else ""
            by = f"; the {self.writer} step writes it" if self.writer else ""
            raise ArtifactFileMissing(f"{self.kind} {self.path}: {name}{about} not found{by}")
        return path

    def problem(self, name: str, message: str) -> ArtifactSchemaError:
        return ArtifactSchemaError(f"{self.kind} {self.path}: {name}: {message}")

    # ------------------------------------------------------------ JSON

    def read_json(self, name: str, what: str = "") -> Any:
        return read_json(self.require(name, what))

    def write_json(self, name: str, obj: Any) -> Path:
        path = self.file(name)
        write_json(path, obj)
        return path

    def write_text(self, name: str, text: str) -> Path:
        path = self.file(name)
        with atomic_file(path) as tmp:
            Path(tmp).write_text(text)
        return path

    def read_text(self, name: str, what: str = "") -> str:
        return self.require(name, what).read_text()

    # ------------------------------------------------------------ Parquet

    def read_table(self, name: str, columns: Sequence[str] | None = None, what: str = ""):
        """File `name` as a pyarrow Table, only `columns` (each must be there) when given."""
        import pyarrow.parquet as pq

        path = self.require(name, what)
        if columns is not None:
            present = set(pq.read_schema(path).names)
            missing = [c for c in columns if c not in present]
            if missing:
                raise self.problem(
                    name, f"no column {', '.join(map(repr, missing))} (it has {', '.join(sorted(present))})"
                )
        return pq.read_table(path, columns=list(columns) if columns is not None else None)

    def read_frame(self, name: str, columns: Sequence[str] | None = None, what: str = ""):
        """File `name` as a pandas DataFrame (see read_table)."""
        return self.read_table(name, columns, what).to_pandas()

    def num_rows(self, name: str, what: str = "") -> int:
        import pyarrow.parquet as pq

        return pq.ParquetFile(self.require(name, what)).metadata.num_rows

    def write_table(self, name: str, table) -> Path:
        """Write a pyarrow Table (or a pandas DataFrame, without its index) as Parquet file `name`."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not isinstance(table, pa.Table):
            table = pa.Table.from_pandas(table, preserve_index=False)
        path = self.file(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path) as tmp:
            pq.write_table(table, tmp)
        return path
