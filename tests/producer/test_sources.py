"""Source listing and reading: local files/directories (unit) and S3 on a real moto server."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from dtmon.services import s3_client
from dtmon.daqfiles import SYNTHETIC_MANIFEST, SourceError
from producer.sources import LocalSource, S3Source, open_source


def touch(directory: Path, name: str, text: str = "1,1,0,5,0,130\n") -> Path:
    path = directory / name
    path.write_text(text)
    return path


def test_directory_lists_daq_files_in_natural_order_and_skips_the_rest(tmp_path):
    for name in ["data_000010.txt", "data_1.txt", "data_000002.txt", "notes.txt", "README.md", "raw.dat", ".data_3.txt"]:
        touch(tmp_path, name)
    touch(tmp_path, SYNTHETIC_MANIFEST, "{}")
    (tmp_path / "data_9.txt").mkdir()  # a directory is not a file
    files = LocalSource(tmp_path).list_files()
    assert [f.name for f in files] == ["data_1.txt", "data_000002.txt", "data_000010.txt"]
    assert all(f.synthetic for f in files)
    assert [f.size for f in files] == [(tmp_path / f.name).stat().st_size for f in files]


def test_directory_without_daq_names_takes_txt_and_csv(tmp_path):
    for name in ["b.txt", "a.CSV", "c.md", "run10.csv", "run9.csv"]:
        touch(tmp_path, name)
    files = LocalSource(tmp_path).list_files()
    assert [f.name for f in files] == ["a.CSV", "b.txt", "run9.csv", "run10.csv"]
    assert not any(f.synthetic for f in files)


def test_single_file_any_name_and_its_bytes(tmp_path, genuine_csv):
    files = LocalSource(genuine_csv).list_files()
    assert [f.name for f in files] == [genuine_csv.name]
    assert not files[0].synthetic
    content = open_source(str(genuine_csv)).read(files[0])
    assert content.data == genuine_csv.read_bytes()
    other = touch(tmp_path, "x.dat")  # an explicitly named file is streamed whatever its name
    touch(tmp_path, SYNTHETIC_MANIFEST, "{}")
    assert LocalSource(other).list_files()[0].synthetic


def test_local_errors_are_clear(tmp_path):
    with pytest.raises(SourceError, match="no such file or directory"):
        LocalSource(tmp_path / "missing").list_files()
    touch(tmp_path, "notes.md")
    with pytest.raises(SourceError, match="no DAQ files"):
        LocalSource(tmp_path).list_files()
    with pytest.raises(SourceError, match="no source"):
        open_source("")


@pytest.fixture
def bucket(s3_endpoint) -> str:
    name = f"b-{uuid.uuid4().hex[:10]}"
    s3_client(s3_endpoint).create_bucket(Bucket=name)
    return name


@pytest.mark.integration
def test_s3_listing_paginates_orders_and_finds_the_manifest(s3_endpoint, bucket):
    client = s3_client(s3_endpoint)
    names = [f"data_{i:06d}.txt" for i in (3, 0, 2, 1, 4)]
    for name in names:
        client.put_object(Bucket=bucket, Key=f"synth/{name}", Body=b"1,1,0,5,0,130\n")
    client.put_object(Bucket=bucket, Key=f"synth/{SYNTHETIC_MANIFEST}", Body=b"{}")
    client.put_object(Bucket=bucket, Key="synth/notes.txt", Body=b"hello")
    client.put_object(Bucket=bucket, Key="synth/deeper/data_000009.txt", Body=b"x")
    client.put_object(Bucket=bucket, Key="real/data_000000.txt", Body=b"2,0,1,5,10,3\n")

    for url in (f"s3://{bucket}/synth", f"s3://{bucket}/synth/"):
        source = S3Source(url, s3_endpoint, page_size=2)  # 2 keys per page: the listing must follow pages
        files = source.list_files()
        assert [f.name for f in files] == sorted(names)
        assert [f.location for f in files] == [f"synth/{n}" for n in sorted(names)]
        assert all(f.synthetic for f in files)

    prefix = S3Source(f"s3://{bucket}/synth/data_00000", s3_endpoint).list_files()  # name prefix
    assert [f.name for f in prefix] == sorted(names) and all(f.synthetic for f in prefix)  # manifest found by HEAD

    real = S3Source(f"s3://{bucket}/real/data_000000.txt", s3_endpoint)  # an exact key
    files = real.list_files()
    assert [f.location for f in files] == ["real/data_000000.txt"] and not files[0].synthetic
    assert real.read(files[0]).data == b"2,0,1,5,10,3\n"


@pytest.mark.integration
def test_s3_object_metadata_marks_synthetic(s3_endpoint, bucket):
    client = s3_client(s3_endpoint)
    client.put_object(Bucket=bucket, Key="data_000000.txt", Body=b"1,1,0,5,0,130\n", Metadata={"dtmon-synthetic": "1"})
    client.put_object(Bucket=bucket, Key="data_000001.txt", Body=b"1,1,0,5,0,130\n")
    source = open_source(f"s3://{bucket}", s3_endpoint)
    files = source.list_files()
    assert [source.read(f).synthetic for f in files] == [True, False]


@pytest.mark.integration
def test_s3_errors_are_clear(s3_endpoint, bucket):
    with pytest.raises(SourceError, match="does not exist"):
        S3Source(f"s3://no-such-{bucket}/x", s3_endpoint).list_files()
    with pytest.raises(SourceError, match="no DAQ files"):
        S3Source(f"s3://{bucket}/empty/", s3_endpoint).list_files()
    with pytest.raises(SourceError, match="not an S3 URL|no bucket"):
        S3Source("s3:///x", s3_endpoint)
    import boto3
    from botocore.config import Config

    from dtmon.services import free_port

    client = boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{free_port()}",  # nothing listens there
        aws_access_key_id="x",
        aws_secret_access_key="x",
        region_name="us-east-1",
        config=Config(retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=1),
    )
    with pytest.raises(SourceError, match="cannot list objects"):
        S3Source(f"s3://{bucket}", client=client).list_files()
