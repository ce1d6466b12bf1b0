"""dtmon.daqfiles: which files are DAQ files, in which order, and the run number of a path (pure)."""

from __future__ import annotations

import pytest

from dtmon.daqfiles import (
    SYNTHETIC_MANIFEST,
    SourceError,
    daq_file_name,
    daq_files,
    is_synthetic_metadata,
    natural_key,
    run_number,
    select_daq_names,
    synthetic_manifest,
)
from dtmon.wire import MAX_RUN


def test_selection_rule_and_natural_key_are_pure():
    assert select_daq_names(["x.csv", "data_2.txt", "data_10.txt", SYNTHETIC_MANIFEST]) == ["data_2.txt", "data_10.txt"]
    assert sorted(["f10", "f9", "f100"], key=natural_key) == ["f9", "f10", "f100"]


def test_daq_files_of_a_directory_a_file_and_nothing(tmp_path):
    for name in ("data_000010.txt", "data_000002.txt", "notes.txt", SYNTHETIC_MANIFEST):
        (tmp_path / name).write_text("x\n")
    assert [p.name for p in daq_files(tmp_path)] == ["data_000002.txt", "data_000010.txt"]
    assert daq_files(tmp_path / "notes.txt") == [tmp_path / "notes.txt"]
    assert synthetic_manifest(tmp_path) == synthetic_manifest(tmp_path / "notes.txt") == tmp_path / SYNTHETIC_MANIFEST
    with pytest.raises(SourceError, match="no such file"):
        daq_files(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert synthetic_manifest(empty) is None
    with pytest.raises(SourceError, match="no DAQ files"):
        daq_files(empty)
    assert daq_file_name(3) == "data_000003.txt"
    assert is_synthetic_metadata({"Dtmon-Synthetic": " 1 "}) and not is_synthetic_metadata({"dtmon-synthetic": "0"})


@pytest.mark.parametrize(
    "path,expected",
    [
        ("data_000003.txt", 3),  # each DAQ file its own run
        ("/data/minidt/data_000000.txt", 0),
        ("minidt/data_000081.txt", 81),  # an S3 key
        ("/data/Run000810/data_000003.txt", 810),  # a run directory wins over the DAQ file number
        ("minidt/run_810/data_000000.txt", 810),
        ("s3://bucket/RUN-12/data_000001.txt", 12),
        ("/runs/Run000966/sub/data_5.txt", 966),  # the run directory need not be the parent
        ("/a/Run000001/Run000810/data_5.txt", 810),  # the innermost run directory
        ("C:\\daq\\Run000810\\data_000001.txt", 810),
        ("MiniDT_data_example/Run_50.txt", 50),  # a run token in the file name
        ("/x/Run000810/run966_data_000001.txt", 966),  # ... wins over the directory
        ("/tmp/pytest-7/test_abc0/data_000007.txt", 7),  # other directories' digits are ignored
        ("/x/rerun5/data_2.txt", 2),  # rerun5 is not a run directory
        ("/x/run7x/data_2.txt", 2),
        ("prerun9_data_4.txt", 4),  # nor is prerun9 a run token
        ("TamannaTasneem__mapd_try__data_000000.txt", 0),
        ("merged__data_000000__rows0000-0998.csv", 0),  # data_N beats the other numbers
        ("eigen-carmona__MAPDBproj__Data__test_3.csv", 3),  # else the last number in the name
        ("hits-2026.csv", 2026),
        (f"data_{MAX_RUN}.txt", MAX_RUN),
    ],
)
def test_run_number_from_the_path(path, expected):
    assert run_number(path, None) == expected


@pytest.mark.parametrize("path", ["data_000003.txt", "/data/Run000810/data_000003.txt", "notes.txt", ""])
def test_an_explicit_run_wins(path):
    assert run_number(path, 42) == 42
    assert run_number(path, 0) == 0


@pytest.mark.parametrize(
    "path,explicit,match",
    [
        ("notes.txt", None, "--run"),
        ("/data/Run000810x/hits.csv", None, "--run"),
        ("", None, "--run"),
        (f"data_{MAX_RUN + 1}.txt", None, "outside"),
        ("data_1.txt", -1, "outside"),
        ("data_1.txt", MAX_RUN + 1, "outside"),
    ],
)
def test_run_number_refuses_what_it_cannot_tell(path, explicit, match):
    with pytest.raises(ValueError, match=match):
        run_number(path, explicit)
