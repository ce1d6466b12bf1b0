"""The Spark home the processor launches its JVM with: Python workers import the installed pyspark."""

from __future__ import annotations

import os
from pathlib import Path

from processor import session as app
from processor.spark_home import WORKER_ZIP, spark_home


def fake_install(root: Path) -> Path:
    """A pip-style Spark home: launcher scripts, jars, a pyspark module and the workers' zip."""
    for d in ("bin", "jars", "python/lib"):
        (root / d).mkdir(parents=True)
    (root / "bin" / "spark-submit").write_text("#!/bin/sh\n")
    (root / "jars" / "spark-core.jar").write_bytes(b"PK")
    (root / "__init__.py").write_text("")
    (root / WORKER_ZIP).write_bytes(b"PK")
    return root


def test_the_home_links_everything_but_the_python_directory(tmp_path):
    installed = fake_install(tmp_path / "pyspark")
    home = spark_home(installed, tmp_path / "cache")
    assert home.parent == tmp_path / "cache" / "spark-home"
    assert sorted(p.name for p in home.iterdir()) == ["__init__.py", "bin", "jars"]
    assert (home / "bin" / "spark-submit").resolve() == (installed / "bin" / "spark-submit").resolve()
    assert (home / "jars").is_symlink() and not (home / WORKER_ZIP).exists()
    assert spark_home(installed, tmp_path / "cache") == home  # built once, then found
    assert not [p for p in home.parent.iterdir() if p.name.startswith(".")]  # no half-built directory left


def test_another_install_gets_a_home_of_its_own_and_one_without_the_zip_is_used_as_is(tmp_path):
    one = spark_home(fake_install(tmp_path / "a" / "pyspark"), tmp_path / "cache")
    other = spark_home(fake_install(tmp_path / "b" / "pyspark"), tmp_path / "cache")
    assert one != other
    plain = tmp_path / "c" / "pyspark"
    (plain / "jars").mkdir(parents=True)
    assert spark_home(plain, tmp_path / "cache") == plain.resolve()


def test_a_home_another_process_renamed_into_place_first_is_used(tmp_path, monkeypatch):
    installed = fake_install(tmp_path / "pyspark")
    real_rename = os.rename

    def other_process_first(src, dst):  # the other process's home lands between our check and our rename
        Path(dst).mkdir()
        (Path(dst) / "theirs").write_text("")
        real_rename(src, dst)  # ours then fails: the target is not empty

    monkeypatch.setattr(os, "rename", other_process_first)
    home = spark_home(installed, tmp_path / "cache")
    assert (home / "theirs").exists()
    assert [p.name for p in home.parent.iterdir()] == [home.name]  # our half is removed


def test_spark_home_is_set_only_when_this_process_launches_the_jvm(tmp_path, monkeypatch):
    monkeypatch.setenv("DTMON_CACHE_DIR", str(tmp_path))
    assert app.use_worker_spark_home({"SPARK_HOME": "/opt/spark"}) is None
    assert app.use_worker_spark_home({"PYSPARK_GATEWAY_PORT": "4242"}) is None
    env: dict[str, str] = {}
    home = app.use_worker_spark_home(env)
    assert home is not None and env["SPARK_HOME"] == str(home) and home.is_relative_to(tmp_path)


def test_spark_python_workers_import_the_installed_pyspark_not_the_zip(spark):
    import pyspark

    def where(_):
        import pyspark as worker_pyspark

        return worker_pyspark.__file__

    in_worker = spark.sparkContext.parallelize([0], 1).map(where).collect()[0]
    assert ".zip" not in in_worker
    assert Path(in_worker).resolve() == Path(pyspark.__file__).resolve()


def test_the_allocator_settings_fill_only_unset_variables():
    env = {"MIMALLOC_PURGE_DELAY": "0"}
    in_effect = app.use_worker_allocator_env(env)
    assert env["MIMALLOC_PURGE_DELAY"] == "0" == in_effect["MIMALLOC_PURGE_DELAY"]  # the operator's value stays
    for key, value in app.WORKER_ALLOCATOR_ENV.items():
        if key != "MIMALLOC_PURGE_DELAY":
            assert env[key] == value == in_effect[key]


def test_spark_python_workers_run_with_the_allocator_settings(spark):
    """The session sets them before its JVM starts; the task workers inherit them from the JVM."""

    def allocator_env(_):
        import os as worker_os

        return {key: worker_os.environ.get(key) for key in app.WORKER_ALLOCATOR_ENV}

    in_worker = spark.sparkContext.parallelize([0], 1).map(allocator_env).collect()[0]
    assert in_worker == {key: os.environ[key] for key in app.WORKER_ALLOCATOR_ENV}
    assert None not in in_worker.values()
