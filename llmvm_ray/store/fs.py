"""One root for everything persisted, local folder or object store, through ``pyarrow.fs``.

Every module that writes (datasets, the registry, fine-tune outputs) goes through ``Storage``
so that pointing ``storage_path`` at ``s3://bucket/llmvm`` moves all of it at once. Paths
handed between processes are *URIs* (``/abs/folder/x`` locally, ``s3://bucket/x`` remotely):
plain strings that survive pickling and JSON, turned back into (filesystem, path) here.
"""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs

_SAFE_COMPONENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def safe_component(value: str, what: str) -> str:
    """``value`` if it can be one path component (no separators, no ``..``), else ValueError.

    Tenant, task and run ids end up in paths; refusing anything else keeps one tenant from
    writing into another's folder.
    """
    if not _SAFE_COMPONENT.match(value) or value in {".", ".."}:
        raise ValueError(
            f"{what} {value!r} must be 1-128 characters of letters, digits, '.', '_' or '-'"
        )
    return value


@dataclass(frozen=True)
class Storage:
    """A filesystem and the root path inside it that everything is stored under."""

    filesystem: pafs.FileSystem
    root: str
    scheme: str  # "" for the local filesystem, else e.g. "s3"

    @classmethod
    def from_uri(cls, uri: str) -> Storage:
        """Open ``uri``: a local folder (``~`` expanded, made absolute) or a pyarrow URI."""
        filesystem, path, scheme = _open(uri)
        return cls(filesystem=filesystem, root=path.rstrip("/") or "/", scheme=scheme)

    @property
    def is_local(self) -> bool:
        return self.scheme == ""

    def path(self, *parts: str) -> str:
        """Filesystem path of ``parts`` joined under the root."""
        return "/".join([self.root.rstrip("/"), *(p.strip("/") for p in parts if p)])

    def uri(self, *parts: str) -> str:
        """URI of ``parts`` under the root (what gets recorded and passed around)."""
        return self.to_uri(self.path(*parts))

    def to_uri(self, path: str) -> str:
        return path if self.is_local else f"{self.scheme}://{path}"

    def locate(self, uri_or_relative: str) -> tuple[Storage, str]:
        """(storage, path) for an absolute URI or local path, or a path relative to the root.

        An absolute location gets a ``Storage`` of its own (its filesystem may differ).
        """
        if "://" in uri_or_relative or uri_or_relative.startswith(("/", "~")):
            other = Storage.from_uri(uri_or_relative)
            return other, other.root
        return self, self.path(uri_or_relative)

    # -- small file operations ---------------------------------------------------------------

    def exists(self, path: str) -> bool:
        info = self.filesystem.get_file_info(path)
        return info.type != pafs.FileType.NotFound

    def is_dir(self, path: str) -> bool:
        return self.filesystem.get_file_info(path).type == pafs.FileType.Directory

    def read_bytes(self, path: str) -> bytes:
        with self.filesystem.open_input_stream(path) as stream:
            return stream.read()

    def write_bytes(self, path: str, data: bytes) -> None:
        """Write ``data`` to ``path`` so that readers see the old or the new file, never half.

        Locally: a temporary sibling then a rename (atomic on POSIX). Object stores publish an
        object only when its upload completes, so a direct write is already atomic there.
        """
        parent = path.rsplit("/", 1)[0]
        self.filesystem.create_dir(parent, recursive=True)
        if not self.is_local:
            with self.filesystem.open_output_stream(path) as out:
                out.write(data)
            return
        tmp = f"{parent}/.{path.rsplit('/', 1)[1]}.{uuid.uuid4().hex}.tmp"
        try:
            with open(tmp, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):  # a full disk must not keep the partial copy
                os.unlink(tmp)
            raise

    def list_files(self, path: str, suffix: str = "") -> list[str]:
        """Files directly inside ``path`` ending in ``suffix``, sorted; [] if it is missing."""
        if not self.is_dir(path):
            return []
        selector = pafs.FileSelector(path, recursive=False)
        return sorted(
            info.path
            for info in self.filesystem.get_file_info(selector)
            if info.type == pafs.FileType.File
            and info.path.endswith(suffix)
            and not info.base_name.startswith(".")
        )

    def delete_dir(self, path: str) -> None:
        if self.is_dir(path):
            self.filesystem.delete_dir(path)

    def upload_dir(self, local_dir: str | Path, path: str) -> None:
        """Copy a local folder to ``path`` (replacing nothing else that is there)."""
        self.filesystem.create_dir(path, recursive=True)
        pafs.copy_files(
            str(local_dir),
            path,
            source_filesystem=pafs.LocalFileSystem(),
            destination_filesystem=self.filesystem,
        )

    def download_dir(self, path: str, local_dir: str | Path) -> Path:
        """Copy the folder at ``path`` to ``local_dir`` and return it."""
        Path(local_dir).mkdir(parents=True, exist_ok=True)
        pafs.copy_files(
            path,
            str(local_dir),
            source_filesystem=self.filesystem,
            destination_filesystem=pafs.LocalFileSystem(),
        )
        return Path(local_dir)


def _open(uri: str) -> tuple[pafs.FileSystem, str, str]:
    if "://" not in uri or uri.startswith("file://"):
        local = uri[len("file://") :] if uri.startswith("file://") else uri
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(local)), ""
    filesystem, path = pafs.FileSystem.from_uri(uri)
    return filesystem, path, uri.split("://", 1)[0]
