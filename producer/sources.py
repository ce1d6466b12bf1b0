"""Where DAQ files come from: a local file, a local directory, or an S3 prefix.

A *source* is given as a string:

* ``/path/to/data_000000.txt`` - one local file (any name);
* ``/path/to/dir`` - the DAQ files directly inside a local directory (not recursive);
* ``s3://bucket/prefix`` - S3 objects under ``prefix`` (boto3; ``endpoint_url`` for
  non-AWS S3 such as CloudVeneto or a moto server; credentials from the standard AWS
  environment variables / profile).

Which files are DAQ files, their order and the synthetic marker: ``dtmon.daqfiles``.

S3 prefixes: ``s3://bucket`` and ``s3://bucket/dir/`` list the objects directly in that
"directory"; ``s3://bucket/dir`` (no trailing slash) is read as a name prefix first
(``s3://bucket/dir/data_00`` selects ``data_00*``; an exact key selects that one
object) and as the directory ``dir/`` if no object name starts with it.

Errors: every problem with the source raises ``SourceError`` with a message that says
what was looked for and where (missing path, missing bucket, no DAQ files, S3
unreachable, access denied).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from dtmon.daqfiles import (
    DAQ_NAME_PATTERN,
    SYNTHETIC_MANIFEST,
    SourceError,
    daq_files,
    is_synthetic_metadata,
    select_daq_names,
)

__all__ = ["DaqFile", "FileBytes", "LocalSource", "S3Source", "SourceError", "open_source", "parse_s3_url"]


@dataclass(frozen=True)
class DaqFile:
    """One DAQ file of a source.

    Attributes:
        name: file name without directories, e.g. ``data_000000.txt`` (goes to the
            ``dtmon-file`` header).
        location: local path or S3 key.
        size: bytes, as listed.
        synthetic: True if a ``dtmon-synthetic.json`` manifest sits beside the file
            (S3 object metadata is checked again when the file is read).
    """

    name: str
    location: str
    size: int
    synthetic: bool = False


@dataclass(frozen=True)
class FileBytes:
    """The content of one DAQ file: ``data`` (bytes) and whether it is synthetic."""

    file: DaqFile
    data: bytes
    synthetic: bool


class LocalSource:
    """DAQ files from a local file or directory (see module docstring for the rule)."""

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()
        self.url = str(self.path)

    def list_files(self) -> list[DaqFile]:
        """DAQ files in natural name order.

        Raises:
            SourceError: the path does not exist, or a directory holds no DAQ file.
        """
        files = daq_files(self.path)
        synthetic = (files[0].parent / SYNTHETIC_MANIFEST).is_file()
        return [DaqFile(f.name, str(f), f.stat().st_size, synthetic) for f in files]

    def read(self, file: DaqFile) -> FileBytes:
        """The bytes of ``file``.

        Raises:
            SourceError: the file vanished or cannot be read.
        """
        try:
            data = Path(file.location).read_bytes()
        except OSError as exc:
            raise SourceError(f"cannot read {file.location}: {exc.strerror or exc}") from exc
        return FileBytes(file, data, file.synthetic)


def parse_s3_url(url: str) -> tuple[str, str]:
    """Split ``s3://bucket/prefix`` into (bucket, prefix).

    Raises:
        SourceError: not an ``s3://`` URL or no bucket name.
    """
    if not url.startswith("s3://"):
        raise SourceError(f"not an S3 URL: {url!r} (expected s3://bucket/prefix)")
    bucket, _, prefix = url[len("s3://") :].partition("/")
    if not bucket:
        raise SourceError(f"no bucket in S3 URL {url!r}")
    return bucket, prefix


class S3Source:
    """DAQ files under an S3 prefix, listed with paginated ``list_objects_v2``.

    Args:
        url: ``s3://bucket/prefix``.
        endpoint_url: S3 endpoint for non-AWS S3 (CloudVeneto, moto); None = AWS.
        client: a boto3 S3 client to use instead of ``dtmon.services.s3_client``.
        page_size: objects per listing page (``MaxKeys``), 1..1000.
    """

    def __init__(self, url: str, endpoint_url: str | None = None, client=None, page_size: int = 1000):
        from dtmon.services import s3_client

        self.url = url
        self.endpoint_url = endpoint_url
        self.bucket, self.prefix = parse_s3_url(url)
        self.client = client if client is not None else s3_client(endpoint_url)
        self.page_size = page_size

    def _where(self) -> str:
        return f"{self.url}" + (f" at {self.endpoint_url}" if self.endpoint_url else "")

    def _call(self, what: str, fn, **kwargs):
        """Run one boto3 call, turning its errors into ``SourceError``."""
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        try:
            return fn(**kwargs)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchBucket", "404") and "Key" not in kwargs:
                raise SourceError(f"S3 bucket {self.bucket!r} does not exist ({self._where()})") from exc
            if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                raise SourceError(f"S3 access denied while trying to {what} ({self._where()}): {code}") from exc
            if code in ("NoSuchKey", "404"):
                raise SourceError(f"S3 object vanished while trying to {what} ({self._where()})") from exc
            raise SourceError(f"S3 error while trying to {what} ({self._where()}): {exc}") from exc
        except NoCredentialsError as exc:
            raise SourceError(
                f"no AWS credentials to {what} ({self._where()}): set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a profile"
            ) from exc
        except BotoCoreError as exc:
            raise SourceError(f"cannot {what} ({self._where()}): {exc}") from exc

    def _list(self, prefix: str) -> tuple[list[dict], list[str]]:
        """Objects and common prefixes directly under ``prefix`` (delimiter ``/``), all pages."""
        objects: list[dict] = []
        prefixes: list[str] = []
        token = None
        while True:
            kwargs = {"Bucket": self.bucket, "Prefix": prefix, "Delimiter": "/", "MaxKeys": self.page_size}
            if token:
                kwargs["ContinuationToken"] = token
            page = self._call("list objects", self.client.list_objects_v2, **kwargs)
            objects.extend(page.get("Contents", []))
            prefixes.extend(p["Prefix"] for p in page.get("CommonPrefixes", []))
            if not page.get("IsTruncated"):
                return objects, prefixes
            token = page["NextContinuationToken"]

    def _has_manifest(self, directory: str, listed: set[str]) -> bool:
        key = f"{directory}{SYNTHETIC_MANIFEST}"
        if key in listed:
            return True
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
            return True
        except ClientError:
            return False

    def list_files(self) -> list[DaqFile]:
        """DAQ objects in natural name order (rule in the module docstring).

        Raises:
            SourceError: missing bucket, nothing to stream, S3 unreachable or denied.
        """
        objects, prefixes = self._list(self.prefix)
        if not objects and self.prefix and not self.prefix.endswith("/") and f"{self.prefix}/" in prefixes:
            objects, _ = self._list(f"{self.prefix}/")
        by_key = {o["Key"]: o for o in objects if not o["Key"].endswith("/")}
        exact = [k for k in by_key if k == self.prefix and self.prefix]
        if exact:
            keys = exact
        else:
            names = {PurePosixPath(k).name: k for k in by_key}
            keys = [names[n] for n in select_daq_names(list(names))]
        if not keys:
            raise SourceError(f"no DAQ files ({DAQ_NAME_PATTERN}, *.txt, *.csv) under {self._where()}")
        listed = set(by_key)
        manifests: dict[str, bool] = {}
        files = []
        for key in keys:
            directory = key[: key.rfind("/") + 1]
            if directory not in manifests:
                manifests[directory] = self._has_manifest(directory, listed)
            files.append(DaqFile(PurePosixPath(key).name, key, int(by_key[key].get("Size", 0)), manifests[directory]))
        return files

    def read(self, file: DaqFile) -> FileBytes:
        """The bytes of one object (one GET); synthetic if the manifest or object metadata says so.

        Raises:
            SourceError: the object vanished, access denied, S3 unreachable.
        """
        response = self._call(f"read s3://{self.bucket}/{file.location}", self.client.get_object, Bucket=self.bucket, Key=file.location)
        try:
            data = response["Body"].read()
        except Exception as exc:  # noqa: BLE001 - network errors of the streaming body
            raise SourceError(f"reading s3://{self.bucket}/{file.location} failed: {exc}") from exc
        return FileBytes(file, data, file.synthetic or is_synthetic_metadata(response.get("Metadata")))


def open_source(source: str, endpoint_url: str | None = None) -> LocalSource | S3Source:
    """A source object for a file path, directory path or ``s3://bucket/prefix`` URL.

    Raises:
        SourceError: ``source`` is empty.
    """
    if not source:
        raise SourceError("no source given: pass --source (a file, a directory or s3://bucket/prefix)")
    if source.startswith("s3://"):
        return S3Source(source, endpoint_url)
    if source.startswith("file://"):
        source = source[len("file://") :]
    return LocalSource(source)
