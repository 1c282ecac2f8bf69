"""Tests of data_prep: CIFAR sources -> FFCV .beton files + manifest.

Tiny sources are built here in the official formats (tests/data_prep_helpers.py). Conversions run
in-process through `write_beton` / `prepare` (the writer compiles FFCV's numba lookups before it
forks, and a watchdog turns a stalled writer into an error); the CLI and an FFCV Loader are exercised
in subprocesses.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import json
import os
import pickle
import socket
import subprocess
import sys
import tarfile
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cifar_dist.errors import InputError
from data_prep import DataPrepError, read_beton, read_labels, write_beton
from data_prep.cli import PrepareArgs, prepare
from data_prep.cli import main as prep_main
from data_prep.download import OFFICIAL
from tests.data_prep_helpers import (
    REPO,
    in_written_order,
    make_cifar10_archive,
    make_cifar10_dir,
    make_cifar100_dir,
    make_image_folder,
    make_tar,
    output_files,
    png_bytes,
    run_cli,
    smooth_images,
)
from tests.helpers import SHARED_JPEG, small_tmpfs

SPLITS = ("train", "test")


def leftovers(root: Path) -> list[Path]:
    """Every beton, manifest or temporary file anywhere under `root`."""
    return [
        p
        for p in root.rglob("*")
        if p.suffix == ".beton" or p.name.endswith("_manifest.json") or ".tmp-" in p.name
    ]


def assert_betons_match(out: Path, name: str, expected, *, exact: bool = True) -> None:
    """Read both betons back and compare labels exactly and pixels exactly (or closely for jpg)."""
    for split in SPLITS:
        images, labels = read_beton(out / f"{name}_{split}.beton")
        exp_images, exp_labels = expected.split(split)
        np.testing.assert_array_equal(labels, exp_labels)
        assert images.shape == exp_images.shape
        if exact:
            np.testing.assert_array_equal(images, exp_images)
        else:
            assert np.abs(images.astype(int) - exp_images.astype(int)).mean() < 6


def assert_manifest_counts(manifest: dict, expected) -> None:
    assert manifest["class_names"] == list(expected.class_names)
    for split in SPLITS:
        _, labels = expected.split(split)
        counts = np.bincount(labels, minlength=len(expected.class_names))
        assert manifest["counts"][split]["total"] == len(labels)
        assert manifest["counts"][split]["per_class"] == {
            c: int(k) for c, k in zip(expected.class_names, counts)
        }


# ----------------------------------------------------------------------------------------------- #
# Successful conversions


@pytest.mark.parametrize("mode", ["raw", "jpg"])
def test_the_numpy_reader_reads_what_ffcvs_reader_reads(mode, tmp_path):
    """data_prep's own parse of a beton (no FFCV import: ~3.5 s of a trainer's start-up) against
    ffcv.reader.Reader on the same file: header count, every metadata column, the allocation table."""
    from data_prep.beton import open_beton

    archive, _ = make_cifar10_archive(tmp_path)
    write_beton(archive, tmp_path / "out", mode=mode, num_workers=1, log=None)
    path = tmp_path / "out" / "cifar10_train.beton"
    probe = ("import sys; from pathlib import Path; from data_prep.beton import open_beton, read_beton; "
             f"b = open_beton(Path({str(path)!r})); read_beton(Path({str(path)!r})); "
             "print(len(b.labels), 'ffcv' in sys.modules)")
    p = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=120)
    mine = open_beton(path)
    assert p.returncode == 0 and p.stdout.split() == [str(len(mine.labels)), "False"], p.stderr

    threads = torch.get_num_threads()
    from ffcv.reader import Reader

    torch.set_num_threads(threads)
    ref = Reader(str(path))
    assert int(ref.num_samples) == len(mine.labels) == len(mine.images) > 0
    assert np.array_equal(ref.metadata["f1"], mine.labels)  # fields in written order: image, label
    for column in ("mode", "width", "height", "data_ptr"):
        assert np.array_equal(ref.metadata["f0"][column], mine.images[column]), column
    assert set(mine.images["mode"].tolist()) == {1 if mode == "raw" else 0}
    assert np.array_equal(ref.alloc_table, mine.alloc_table) and len(mine.alloc_table) == len(mine.labels)


def test_cifar10_archive_raw_is_pixel_exact_with_full_manifest(tmp_path):
    archive, expected = make_cifar10_archive(tmp_path)
    out = tmp_path / "out"
    threads = torch.get_num_threads()
    manifest = write_beton(archive, out, num_workers=2, log=None)
    assert torch.get_num_threads() == threads  # importing FFCV must not leave torch at 1 thread

    assert output_files(out) == ["cifar10_manifest.json", "cifar10_test.beton", "cifar10_train.beton"]
    assert_betons_match(out, "cifar10", expected)
    on_disk = json.loads((out / "cifar10_manifest.json").read_text())
    assert on_disk == manifest
    assert_manifest_counts(manifest, expected)
    assert manifest["dataset"] == "cifar10" and manifest["name"] == "cifar10"
    assert manifest["write_mode"] == "raw" and manifest["jpeg_quality"] is None
    assert manifest["image_resolution"] == 32 and manifest["image_shape"] == [32, 32, 3]
    assert manifest["source_sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert manifest["ffcv_version"] == "1.0.2"
    assert manifest["labels"] is None and manifest["source_kind"] == "cifar_archive"
    assert manifest["order"] == {"shuffled": False}  # the official batches are already mixed
    for split in SPLITS:
        f = out / f"cifar10_{split}.beton"
        assert manifest["files"][split]["bytes"] == f.stat().st_size
        assert manifest["files"][split]["sha256"] == hashlib.sha256(f.read_bytes()).hexdigest()


@pytest.mark.slow
def test_cifar10_batches_folder_and_its_parent_folder(tmp_path):
    expected = make_cifar10_dir(tmp_path / "src")
    for i, source in enumerate((tmp_path / "src" / "cifar-10-batches-py", tmp_path / "src")):
        out = tmp_path / f"out{i}"
        manifest = write_beton(source, out, num_workers=1, log=None)
        assert manifest["source_kind"] == "cifar_dir"
        assert_betons_match(out, "cifar10", expected)


@pytest.mark.slow
def test_cifar100_fine_and_coarse_labels(tmp_path):
    fine, coarse = make_cifar100_dir(tmp_path / "src")
    archive = make_tar(tmp_path / "src" / "cifar-100-python", tmp_path / "cifar-100-python.tar.gz")
    m_fine = write_beton(archive, tmp_path / "fine", num_workers=1, log=None)
    m_coarse = write_beton(archive, tmp_path / "coarse", labels="coarse", num_workers=1, log=None)

    assert m_fine["name"] == "cifar100" and m_fine["labels"] == "fine" and m_fine["num_classes"] == 100
    assert m_coarse["labels"] == "coarse" and m_coarse["num_classes"] == 20
    assert_manifest_counts(m_fine, fine)
    assert_manifest_counts(m_coarse, coarse)
    assert_betons_match(tmp_path / "fine", "cifar100", fine)
    assert_betons_match(tmp_path / "coarse", "cifar100", coarse)


def test_image_folder_converts_modes_to_rgb_and_orders_classes(tmp_path):
    expected = make_image_folder(tmp_path / "pets", modes=("RGB", "L", "RGBA", "P"), n_train=5, n_test=3)
    out = tmp_path / "out"
    manifest = write_beton(tmp_path / "pets", out, num_workers=2, log=None)
    assert manifest["name"] == "pets" and manifest["dataset"] == "image_folder"
    assert manifest["class_names"] == ["cat", "dog", "frog"]
    assert manifest["order"] == {"shuffled": True, "seed": 0}
    assert_manifest_counts(manifest, expected)
    assert_betons_match(out, "pets", in_written_order(expected))


@pytest.mark.parametrize("arcname", ["", "cifar-tiny"], ids=["tree-at-top", "under-one-folder"])
@pytest.mark.slow
def test_image_folder_tar(tmp_path, arcname):
    expected = make_image_folder(tmp_path / "tree", n_train=3, n_test=2)
    (tmp_path / "tree" / "README.txt").write_text("ignored: not under train/ or test/\n")
    archive = make_tar(tmp_path / "tree", tmp_path / "tiny-folder.tar.gz", arcname=arcname)
    out = tmp_path / "out"
    manifest = write_beton(archive, out, num_workers=2, log=None)
    assert manifest["name"] == "tiny-folder" and manifest["source_kind"] == "folder_tar"
    assert manifest["order"] == {"shuffled": True, "seed": 0}
    assert_betons_match(out, "tiny-folder", in_written_order(expected))


@pytest.mark.slow
def test_jpg_mode_with_verify(tmp_path):
    expected = in_written_order(
        make_image_folder(tmp_path / "tree", fmt="png", n_train=6, n_test=3)
    )  # noise: JPEG's worst case
    out = tmp_path / "out"
    manifest = write_beton(
        tmp_path / "tree", out, mode="jpg", jpeg_quality=90, verify=True, num_workers=1, log=None
    )
    assert manifest["write_mode"] == "jpg" and manifest["jpeg_quality"] == 90
    assert manifest["fields"]["image"] == {
        "type": "RGBImageField",
        "write_mode": "jpg",
        "jpeg_quality": 90,
        "max_resolution": 32,
    }
    assert manifest["verified"] is True
    for split in SPLITS:
        report = manifest["verification"][split]
        assert report["labels_checked"] == len(expected.split(split)[1])
        assert report["mean_abs_diff"] <= report["bound"]
        images, labels = read_beton(out / f"tree_{split}.beton")
        np.testing.assert_array_equal(labels, expected.split(split)[1])
        assert images.shape == expected.split(split)[0].shape


@pytest.mark.slow
def test_jpg_mode_on_smooth_images_is_close(tmp_path):
    expected = make_image_folder(tmp_path / "tree", fmt="png", n_train=4, n_test=2, seed=5)
    # overwrite with smooth content saved losslessly so the JPEG error is small and meaningful
    rng = np.random.default_rng(0)
    for split in SPLITS:
        images, _ = expected.split(split)
        smooth = smooth_images(rng, len(images))
        images[:] = smooth
        files = sorted((tmp_path / "tree" / split).rglob("*.png"))
        for f, img in zip(files, smooth):
            f.write_bytes(png_bytes(img))
    write_beton(
        tmp_path / "tree", tmp_path / "out", mode="jpg", jpeg_quality=95, verify=True, num_workers=1, log=None
    )
    expected = in_written_order(expected)
    for split in SPLITS:
        images, labels = read_beton(tmp_path / "out" / f"tree_{split}.beton")
        diff = np.abs(images.astype(int) - expected.split(split)[0].astype(int)).mean()
        assert diff < 3.0
        np.testing.assert_array_equal(labels, expected.split(split)[1])


@pytest.mark.slow
def test_rerun_is_a_noop_and_force_or_new_options_rewrite(tmp_path):
    archive, expected = make_cifar10_archive(tmp_path)
    out = tmp_path / "out"
    write_beton(archive, out, num_workers=1, log=None)
    files = [out / f for f in output_files(out)]
    before = {f: f.stat().st_mtime_ns for f in files}
    time.sleep(0.02)

    stale = out / ".cifar10_train.beton.tmp-999999999"  # left by a killed run (no such pid)
    stale.write_bytes(b"partial")
    messages: list[str] = []
    again = write_beton(archive, out, num_workers=1, verify=True, log=messages.append)
    assert any("up to date" in m for m in messages)
    assert sum("verified cifar10_" in m for m in messages) == 2  # --verify checks the existing files
    assert {f: f.stat().st_mtime_ns for f in files} == before
    assert again == json.loads((out / "cifar10_manifest.json").read_text())
    assert not stale.exists()

    write_beton(archive, out, num_workers=1, force=True, log=None)
    assert all(f.stat().st_mtime_ns != before[f] for f in files)
    assert_betons_match(out, "cifar10", expected)

    after_force = {f: f.stat().st_mtime_ns for f in files}
    m = write_beton(archive, out, mode="jpg", num_workers=1, log=None)  # different options: rewrite
    assert m["write_mode"] == "jpg"
    assert all(f.stat().st_mtime_ns != after_force[f] for f in files)


@pytest.mark.slow
def test_changed_source_or_missing_beton_rewrites(tmp_path):
    expected = make_cifar10_dir(tmp_path / "src")
    src = tmp_path / "src" / "cifar-10-batches-py"
    out = tmp_path / "out"
    first = write_beton(src, out, num_workers=1, log=None)
    (out / "cifar10_test.beton").unlink()
    messages: list[str] = []
    write_beton(src, out, num_workers=1, log=messages.append)
    assert not any("up to date" in m for m in messages)
    assert (out / "cifar10_test.beton").is_file()

    make_cifar10_dir(tmp_path / "src2", seed=9)
    os.replace(tmp_path / "src2" / "cifar-10-batches-py" / "test_batch", src / "test_batch")
    second = write_beton(src, out, num_workers=1, log=None)
    assert second["source_sha256"] != first["source_sha256"]
    _, labels = read_beton(out / "cifar10_train.beton")
    np.testing.assert_array_equal(labels, expected.train_labels)


@pytest.mark.slow
def test_prepare_prints_summary_table_and_returns_0(tmp_path, capsys):
    archive, expected = make_cifar10_archive(tmp_path)
    rc = prepare(str(archive), out=str(tmp_path / "out"), num_workers=1, verify=True)
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert captured.err == ""
    lines = captured.out.splitlines()
    counts_train = np.bincount(expected.train_labels, minlength=10)
    counts_test = np.bincount(expected.test_labels, minlength=10)
    row = next(line for line in lines if line.startswith("airplane "))
    assert row.split() == [
        "airplane",
        str(counts_train[0]),
        str(counts_test[0]),
        str(counts_train[0] + counts_test[0]),
    ]
    total = next(line for line in lines if line.startswith("total "))
    assert total.split() == ["total", "15", "5", "20"]
    assert "verified" in captured.out


@pytest.mark.slow
def test_cli_subprocess_end_to_end_and_noop(tmp_path):
    archive, expected = make_cifar10_archive(tmp_path)
    out = tmp_path / "out"
    r = run_cli(str(archive), "--out", str(out), "--num_workers", "1", "--verify")
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""  # no terminal -> no progress bars; no warnings
    assert "total" in r.stdout and "cifar10_train.beton" in r.stdout
    assert_betons_match(out, "cifar10", expected)
    mtimes = {f: (out / f).stat().st_mtime_ns for f in output_files(out)}

    r = run_cli(str(archive), "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "up to date" in r.stdout
    assert {f: (out / f).stat().st_mtime_ns for f in output_files(out)} == mtimes


@pytest.mark.parametrize(
    "module,flag,prog",
    [("data_prep", "--help", "python -m data_prep"), ("cifar_dist", "-h", "cifar-dist prepare")],
    ids=["python-m-data_prep", "cifar-dist-prepare"],
)
def test_help_explains_every_option_with_an_example(module, flag, prog):
    args = (flag,) if module == "data_prep" else ("prepare", flag)
    r = run_cli(*args, module=module)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert r.stdout.startswith(f"usage: {prog} SOURCE")
    lines = [line.strip() for line in r.stdout.splitlines()]
    flags = {f.name: f.default for f in dataclasses.fields(PrepareArgs) if f.name != "source"}
    assert {"out", "name", "mode", "jpeg_quality", "labels", "force", "verify", "num_workers", "md5", "cache_dir",
            "progress"} <= set(flags)  # every flag of the old parser
    for flag_name, default in flags.items():
        doc = [line for line in lines if line.startswith(f"--{flag_name}=")]
        assert len(doc) == 1 and "Example" in doc[0], flag_name
        shown = "none" if default is None else str(default).lower()
        assert doc[0].startswith(f"--{flag_name}={shown}  "), flag_name  # defaults as values
    assert any(line.startswith("SOURCE") and "Example" in line for line in lines)
    assert "Optional" not in r.stdout and "str | None" not in r.stdout
    assert "examples:" in r.stdout and "python -m data_prep" in r.stdout and "cifar-dist prepare" in r.stdout


def test_both_entry_points_print_the_same_help():
    ours = run_cli("--help").stdout
    theirs = run_cli("prepare", "--help", module="cifar_dist").stdout
    assert ours.replace("usage: python -m data_prep", "usage: cifar-dist prepare", 1) == theirs


@pytest.mark.parametrize(
    "module,extra",
    [("data_prep", ["--bogus", "1"]), ("data_prep", ["--no-verify"]), ("cifar_dist", ["--bogus=1"]),
     ("data_prep", ["surplus-argument"])],
    ids=["unknown-flag", "unknown-negation", "cifar-dist-unknown-flag", "extra-positional"],
)
def test_unknown_flag_converts_nothing(tmp_path, module, extra):
    archive, _ = make_cifar10_archive(tmp_path)
    out = tmp_path / "out"
    args = [str(archive), "--out", str(out), *extra]
    started = time.monotonic()
    r = run_cli(*(args if module == "data_prep" else ["prepare", *args]), module=module)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: "), r.stderr
    assert extra[0].split("=")[0] in r.stderr
    assert r.stdout == ""  # nothing read, nothing converted
    assert not out.exists() and leftovers(tmp_path) == []
    assert time.monotonic() - started < 60  # refused before FFCV or the source was touched


@pytest.mark.slow
def test_progress_bars_when_requested(tmp_path, capsys):
    make_image_folder(tmp_path / "tree", n_train=2, n_test=1)
    assert prepare(str(tmp_path / "tree"), out=str(tmp_path / "out"), num_workers=1, progress=True) == 0
    err = capsys.readouterr().err
    assert "decode images" in err and "write tree_train.beton" in err and "write tree_test.beton" in err


# ----------------------------------------------------------------------------------------------- #
# Downloads


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_dir(tmp_path):
    """Serve tmp_path/www over http://127.0.0.1:<port>/; yields (folder, base URL)."""
    www = tmp_path / "www"
    www.mkdir()
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(www))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.slow
def test_download_to_cache_with_md5(tmp_path, http_dir):
    www, base = http_dir
    archive, expected = make_cifar10_archive(tmp_path)
    (www / "tiny-c10.tar.gz").write_bytes(archive.read_bytes())
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    cache = tmp_path / "cache"
    manifest = write_beton(f"{base}/tiny-c10.tar.gz", tmp_path / "out", md5=md5, cache_dir=cache, log=None)
    assert sorted(p.name for p in cache.iterdir()) == ["tiny-c10.tar.gz"]  # no temporary left
    assert manifest["source"] == f"{base}/tiny-c10.tar.gz" and manifest["source_kind"] == "cifar_archive"
    assert_betons_match(tmp_path / "out", "cifar10", expected)
    (www / "tiny-c10.tar.gz").unlink()  # second run uses the cache
    write_beton(f"{base}/tiny-c10.tar.gz", tmp_path / "out", md5=md5, cache_dir=cache, force=True, log=None)


def test_download_md5_mismatch_official_name(tmp_path, http_dir, capsys):
    www, base = http_dir
    archive, _ = make_cifar10_archive(tmp_path)
    (www / "cifar-10-python.tar.gz").write_bytes(archive.read_bytes())  # not the official bytes
    cache = tmp_path / "cache"
    rc = prepare(f"{base}/cifar-10-python.tar.gz", out=str(tmp_path / "out"), cache_dir=str(cache))
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith(f"error: {base}/cifar-10-python.tar.gz: expected")
    assert OFFICIAL["cifar10"].md5 in err
    assert list(cache.iterdir()) == []  # temp removed, nothing renamed into the cache
    assert leftovers(tmp_path) == []


def test_offline_download_is_one_line_exit_2(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/cifar-10-python.tar.gz"
    r = run_cli(url, "--out", str(tmp_path / "out"), "--cache_dir", str(tmp_path / "cache"))
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and r.stderr.startswith(
        f"error: {url}: expected a reachable download URL"
    )
    assert "network error" in r.stderr
    assert leftovers(tmp_path) == []
    assert not any((tmp_path / "cache").iterdir())


# ----------------------------------------------------------------------------------------------- #
# Bad inputs: one line on stderr naming the file, exit status 2, nothing left behind


def _bad_pickle_archive(tmp: Path, content: bytes, member: str = "data_batch_2") -> Path:
    make_cifar10_dir(tmp / "src")
    (tmp / "src" / "cifar-10-batches-py" / member).write_bytes(content)
    return make_tar(tmp / "src" / "cifar-10-batches-py", tmp / "cifar-10-python.tar.gz")


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def _case_missing(tmp: Path):
    return [str(tmp / "nope.tar.gz")], "nope.tar.gz: expected an existing archive or folder", {}


def _case_not_archive(tmp: Path):
    (tmp / "notes.tar.gz").write_text("this is not an archive\n" * 50)
    return [str(tmp / "notes.tar.gz")], "notes.tar.gz: expected a .tar/.tar.gz archive", {}


def _case_truncated(tmp: Path):
    archive, _ = make_cifar10_archive(tmp, per_batch=40, n_test=40)
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    return [str(archive)], "cifar-10-python.tar.gz", {"found": "truncated or corrupt archive"}


def _case_md5_mismatch(tmp: Path):
    archive, _ = make_cifar10_archive(tmp)
    wrong = OFFICIAL["cifar10"].md5
    return [str(archive), "--md5", wrong], f"cifar-10-python.tar.gz: expected md5 {wrong}, found md5", {}


def _case_pickle_keys(tmp: Path):
    archive = _bad_pickle_archive(tmp, pickle.dumps({b"pixels": np.zeros((2, 3072), np.uint8), b"y": [1, 2]}))
    return (
        [str(archive)],
        "cifar-10-python.tar.gz:cifar-10-batches-py/data_batch_2: expected keys b'data', b'labels'",
        {},
    )


def _case_pickle_garbage(tmp: Path):
    archive = _bad_pickle_archive(tmp, b"\x80\x02garbage" * 10, member="batches.meta")
    return [str(archive)], "cifar-10-batches-py/batches.meta: expected a pickled dict", {}


def _case_pickle_evil(tmp: Path):
    archive = _bad_pickle_archive(tmp, pickle.dumps({b"data": _Evil(), b"labels": []}))
    return [str(archive)], "data_batch_2: expected a pickled dict", {"found": "posix.system is not allowed"}


def _case_pickle_shape(tmp: Path):
    archive = _bad_pickle_archive(
        tmp, pickle.dumps({b"data": np.zeros((2, 1024), np.uint8), b"labels": [0, 1]})
    )
    return (
        [str(archive)],
        "data_batch_2: expected b'data' as a uint8 array of shape (N, 3072), found uint8",
        {},
    )


def _case_wrong_size(tmp: Path):
    make_image_folder(tmp / "tree")
    from PIL import Image

    Image.new("RGB", (64, 48)).save(tmp / "tree" / "train" / "dog" / "001.png")
    return (
        [str(tmp / "tree")],
        "train/dog/001.png: expected a 32x32 image for a CIFAR source, found a 64x48 image",
        {},
    )


def _case_wrong_size_in_tar(tmp: Path):
    make_image_folder(tmp / "tree")
    from PIL import Image

    Image.new("RGB", (31, 32)).save(tmp / "tree" / "test" / "cat" / "000.png")
    archive = make_tar(tmp / "tree", tmp / "pets.tar.gz", arcname="pets")
    return (
        [str(archive)],
        "pets.tar.gz:pets/test/cat/000.png: expected a 32x32 image",
        {"found": "a 31x32 image"},
    )


def _case_class_sets_differ(tmp: Path):
    make_image_folder(tmp / "tree")
    os.rename(tmp / "tree" / "test" / "frog", tmp / "tree" / "test" / "toad")
    return (
        [str(tmp / "tree")],
        "tree: expected the same class folders in train/ and test/",
        {"found": "only in train: frog; only in test: toad"},
    )


def _case_empty_class(tmp: Path):
    make_image_folder(tmp / "tree")
    (tmp / "tree" / "train" / "zebra").mkdir()
    (tmp / "tree" / "test" / "zebra").mkdir()
    return (
        [str(tmp / "tree")],
        "train/zebra: expected at least one image in each class folder, found an empty",
        {},
    )


def _case_unreadable_image(tmp: Path):
    make_image_folder(tmp / "tree")
    (tmp / "tree" / "train" / "cat" / "002.png").write_bytes(b"\x89PNG not really")
    return (
        [str(tmp / "tree")],
        "train/cat/002.png: expected an image file PIL can read, found unreadable data",
        {},
    )


def _case_out_under_file(tmp: Path):
    archive, _ = make_cifar10_archive(tmp)
    (tmp / "afile").write_text("x")
    return (
        [str(archive), "--out", str(tmp / "afile" / "out")],
        "afile/out: expected a writable output directory",
        {
            "found": "is a file, not a folder",
        },
    )


def _case_out_is_file(tmp: Path):
    archive, _ = make_cifar10_archive(tmp)
    (tmp / "out").write_text("x")
    return (
        [str(archive), "--out", str(tmp / "out")],
        "out: expected a writable output directory, found an existing file",
        {},
    )


def _case_coarse_on_cifar10(tmp: Path):
    archive, _ = make_cifar10_archive(tmp)
    return (
        [str(archive), "--labels", "coarse"],
        "--labels: expected fine for a CIFAR-10 or image-folder source",
        {},
    )


BAD_CASES = {
    "missing-path": _case_missing,
    "not-an-archive": _case_not_archive,
    "truncated-archive": _case_truncated,
    "md5-mismatch": _case_md5_mismatch,
    "pickle-without-keys": _case_pickle_keys,
    "pickle-garbage": _case_pickle_garbage,
    "pickle-with-code": _case_pickle_evil,
    "pickle-wrong-shape": _case_pickle_shape,
    "image-wrong-size": _case_wrong_size,
    "image-wrong-size-in-tar": _case_wrong_size_in_tar,
    "class-sets-differ": _case_class_sets_differ,
    "empty-class-folder": _case_empty_class,
    "unreadable-image": _case_unreadable_image,
    "out-dir-under-a-file": _case_out_under_file,
    "out-dir-is-a-file": _case_out_is_file,
    "coarse-labels-on-cifar10": _case_coarse_on_cifar10,
}


@pytest.mark.parametrize("case", list(BAD_CASES), ids=list(BAD_CASES))
def test_bad_input_one_line_exit_2_nothing_left(tmp_path, capsys, case):
    argv, needle, extra = BAD_CASES[case](tmp_path)
    if "--out" not in argv:
        argv = [*argv, "--out", str(tmp_path / "out")]
    rc = prep_main(argv)  # the same strict parser as the command line, in this process
    captured = capsys.readouterr()
    assert rc == 2
    assert captured.err.endswith("\n") and captured.err.count("\n") == 1, captured.err
    assert captured.err.startswith("error: ")
    assert needle in captured.err, captured.err
    if "found" in extra:
        assert extra["found"] in captured.err
    assert leftovers(tmp_path) == []
    assert "pwned" not in captured.out


@pytest.mark.parametrize("case", ["truncated-archive", "unreadable-image", "out-dir-under-a-file"])
def test_bad_input_through_the_real_cli(tmp_path, case):
    argv, needle, _ = BAD_CASES[case](tmp_path)
    if "--out" not in argv:
        argv = [*argv, "--out", str(tmp_path / "out")]
    r = run_cli(*argv, "--num_workers", "2")
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: ") and needle in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert leftovers(tmp_path) == []


def test_data_prep_error_is_one_line_and_picklable():
    err = DataPrepError("a\nb.png", "x", "y\nz")
    assert isinstance(err, InputError)  # the project's family of user-fixable errors
    assert str(err) == "a b.png: expected x, found y z" == err.one_line()
    again = pickle.loads(pickle.dumps(err))
    assert (again.path, again.expected, again.found) == (err.path, err.expected, err.found)


# ----------------------------------------------------------------------------------------------- #
# Failures while writing


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that mention `text` (e.g. a test's tmp_path)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
            state = (cmdline.parent / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z" and any(text.encode() in a for a in args) and cmdline.parent.name != str(os.getpid()):
            found.append(b" ".join(args).decode(errors="replace"))
    return found


@pytest.mark.slow
def test_writer_worker_failure_is_an_error_not_a_hang(tmp_path):
    import resource

    archive, expected = make_cifar10_archive(tmp_path, per_batch=40, n_test=40)
    out = tmp_path / "out"
    write_beton(archive, out, num_workers=1, log=None)
    before = {f: (out / f).stat().st_mtime_ns for f in output_files(out)}

    def small_files() -> None:  # every file the conversion writes may hold 1 MiB: the writer's workers fail
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    started = time.monotonic()
    r = run_cli(str(archive), "--out", str(out), "--force", "--num_workers", "2", preexec_fn=small_files)
    assert time.monotonic() - started < 300
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert "cifar10_train.beton: expected the FFCV writer to encode every sample" in r.stderr
    assert "File too large" in r.stderr  # the worker's own error, quoted
    # the earlier outputs are untouched; no temporaries or processes remain
    assert {f: (out / f).stat().st_mtime_ns for f in output_files(out)} == before
    assert_betons_match(out, "cifar10", expected)
    assert processes_mentioning(str(tmp_path)) == []


@pytest.mark.slow
def test_disk_full_is_one_line_and_leaves_nothing(tmp_path):
    """A 30 MB tmpfs (the test mounts and unmounts it) fills up while the .beton files are written."""
    archive, _ = make_cifar10_archive(tmp_path, per_batch=40, n_test=40)
    with small_tmpfs(tmp_path / "small", 30) as small:
        started = time.monotonic()
        r = run_cli(str(archive), "--out", str(small / "out"), "--num_workers", "2")
        assert time.monotonic() - started < 300
        assert r.returncode == 2
        assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: "), r.stderr
        assert "expected the FFCV writer to encode every sample" in r.stderr
        assert "No space left on device" in r.stderr
        assert leftovers(small) == [] and not (small / "out").exists()  # the folder it created is gone too
        assert processes_mentioning(str(tmp_path)) == []


def test_writer_past_its_deadline_is_an_error_not_a_hang(tmp_path):
    archive, _ = make_cifar10_archive(tmp_path)
    started = time.monotonic()
    with pytest.raises(DataPrepError, match=r"cifar10_train.beton: expected the FFCV writer to finish within 0.5 s"):
        write_beton(archive, tmp_path / "out", num_workers=1, write_timeout=0.5, log=None)
    assert time.monotonic() - started < 60
    assert leftovers(tmp_path) == []
    assert processes_mentioning(str(tmp_path)) == []  # the writer's whole session was stopped


@pytest.mark.slow
def test_same_size_corruption_is_detected_and_rewritten(tmp_path):
    archive, expected = make_cifar10_archive(tmp_path)
    out = tmp_path / "out"
    write_beton(archive, out, num_workers=1, log=None)
    path = out / "cifar10_train.beton"
    images, _ = read_beton(path)
    blob = bytearray(path.read_bytes())
    size = len(blob)
    pos = blob.find(images[3].tobytes())
    blob[pos + 7] ^= 0xFF  # one pixel byte changed in place: same size
    path.write_bytes(bytes(blob))
    assert path.stat().st_size == size

    messages: list[str] = []
    manifest = write_beton(archive, out, num_workers=1, verify=True, log=messages.append)
    assert not any("up to date" in m for m in messages)  # the sha256 no longer matches: rewritten
    assert manifest["files"]["train"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert_betons_match(out, "cifar10", expected)
    messages.clear()
    write_beton(archive, out, num_workers=1, log=messages.append)
    assert any("up to date" in m for m in messages)


@pytest.mark.slow
def test_image_folder_is_written_shuffled_and_rerun_stays_idempotent(tmp_path):
    classes = tuple(f"class{i}" for i in range(10))
    expected = make_image_folder(tmp_path / "tree", classes=classes, n_train=10, n_test=4)
    out = tmp_path / "out"
    manifest = write_beton(tmp_path / "tree", out, num_workers=2, log=None)
    assert manifest["order"] == {"shuffled": True, "seed": 0}
    labels = read_labels(out / "tree_train.beton")
    assert set(labels[:35].tolist()) == set(range(10))  # the first 35 of 100 rows cover every class
    assert np.count_nonzero(np.diff(labels)) > 50  # not class-sorted
    assert sorted(labels.tolist()) == sorted(expected.train_labels.tolist())
    test_labels = read_labels(out / "tree_test.beton")
    assert np.count_nonzero(np.diff(test_labels)) > 25  # class-sorted would change label 9 times
    assert sorted(test_labels.tolist()) == sorted(expected.test_labels.tolist())
    files = [out / f for f in output_files(out)]
    before = {f: f.stat().st_mtime_ns for f in files}
    messages: list[str] = []
    again = write_beton(tmp_path / "tree", out, num_workers=2, log=messages.append)
    assert any("up to date" in m for m in messages) and again == manifest
    assert {f: f.stat().st_mtime_ns for f in files} == before


@pytest.mark.slow
def test_verify_detects_a_corrupted_beton(tmp_path):
    from data_prep.sources import read_source, resolve_source
    from data_prep.writer import verify_split

    archive, _ = make_cifar10_archive(tmp_path)
    write_beton(archive, tmp_path / "out", num_workers=1, log=None)
    data = read_source(resolve_source(archive), num_workers=1, progress=False)
    path = tmp_path / "out" / "cifar10_test.beton"
    verify_split(path, data.test, mode="raw", jpeg_quality=90)  # intact: passes
    images, _ = read_beton(path)
    blob = bytearray(path.read_bytes())
    pos = blob.find(images[1].tobytes())
    blob[pos + 100] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(
        DataPrepError, match=r"expected pixels identical to the source \(raw mode\), found 1 different"
    ):
        verify_split(path, data.test, mode="raw", jpeg_quality=90)


# ----------------------------------------------------------------------------------------------- #
# FFCV Loader reads the files (in a subprocess: JIT warm-up, threads, fork hazards stay out of pytest)

_LOADER_SCRIPT = textwrap.dedent(
    """
    import sys, numpy as np
    from ffcv.loader import Loader, OrderOption
    from ffcv.fields.decoders import SimpleRGBImageDecoder, IntDecoder
    from data_prep import write_beton
    source, out, result = sys.argv[1], sys.argv[2], sys.argv[3]
    arrays = {}
    for name in ("raw", "jpg"):
        loader = Loader(f"{out}/{name}_train.beton", batch_size=7, num_workers=1, order=OrderOption.SEQUENTIAL,
                        drop_last=False, pipelines={"image": [SimpleRGBImageDecoder()], "label": [IntDecoder()]})
        xs, ys = zip(*[(x.copy(), y.copy()) for x, y in loader])
        arrays[f"{name}_x"], arrays[f"{name}_y"] = np.concatenate(xs), np.concatenate(ys).reshape(-1)
    np.savez(result, **arrays)
    # writing again after Loaders ran in this process must not hang (the FFCV fork pitfall)
    write_beton(source, f"{out}/after", force=True, num_workers=2, log=None)
    print("ok")
    """
)


@pytest.mark.slow
def test_ffcv_loader_reads_what_was_written_and_writer_survives_loader(tmp_path):
    archive, expected = make_cifar10_archive(tmp_path)
    tree = make_image_folder(tmp_path / "tree", fmt="png", n_train=5, n_test=2, seed=3)
    rng = np.random.default_rng(1)
    for split in SPLITS:  # smooth content so the JPEG comparison is meaningful
        images, _ = tree.split(split)
        images[:] = smooth_images(rng, len(images))
        for f, img in zip(sorted((tmp_path / "tree" / split).rglob("*.png")), images):
            f.write_bytes(png_bytes(img))
    tree = in_written_order(tree)
    out = tmp_path / "out"
    write_beton(archive, out, name="raw", num_workers=1, log=None)
    write_beton(tmp_path / "tree", out, name="jpg", mode="jpg", jpeg_quality=95, num_workers=1, log=None)
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    r = subprocess.run(
        [sys.executable, "-c", _LOADER_SCRIPT, str(archive), str(out), str(tmp_path / "result.npz")],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    result = np.load(tmp_path / "result.npz")
    np.testing.assert_array_equal(result["raw_x"], expected.train_images)  # FFCV sees the exact pixels
    np.testing.assert_array_equal(result["raw_y"], expected.train_labels)
    np.testing.assert_array_equal(result["jpg_y"], tree.train_labels)
    assert np.abs(result["jpg_x"].astype(int) - tree.train_images.astype(int)).mean() < 3.0
    assert_betons_match(out / "after", "cifar10", expected)


# ----------------------------------------------------------------------------------------------- #
# Real data


@pytest.mark.slow
def test_real_cifar10_jpeg_archive(real_cifar10):
    out, _, seconds = real_cifar10  # converted once per session by `python -m data_prep ... --verify`
    manifest = json.loads((out / "cifar10_manifest.json").read_text())
    print(f"\nreal CIFAR-10 conversion (read + write + verify, subprocess): {seconds:.1f} s")
    assert manifest["verified"] is True
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    assert manifest["class_names"] == classes
    for split, total, per_class in (("train", 50_000, 5_000), ("test", 10_000, 1_000)):
        labels = read_labels(out / f"cifar10_{split}.beton")  # from the .beton, not the manifest
        assert labels.shape == (total,)
        assert np.bincount(labels, minlength=10).tolist() == [per_class] * 10
        assert manifest["counts"][split]["total"] == total
        images, _ = read_beton(out / f"cifar10_{split}.beton", np.arange(0, total, 997))
        assert images.shape[1:] == (32, 32, 3) and 60 < images.mean() < 200
    assert manifest["order"] == {"shuffled": True, "seed": 0}
    first_rows = read_labels(out / "cifar10_train.beton")[:1000]  # any first-N subset holds every class
    assert set(first_rows.tolist()) == set(range(10)) and np.bincount(first_rows, minlength=10).min() >= 50
    # the first training row is file number permutation(50000)[0] of the class-major sorted listing
    from PIL import Image

    with tarfile.open(SHARED_JPEG) as tar:
        members = sorted(
            (m for m in tar.getmembers() if m.isfile() and m.name.lstrip("./").startswith("train/")),
            key=lambda m: tuple(m.name.lstrip("./").split("/")[1:3]),
        )
        member = members[int(np.random.default_rng(0).permutation(len(members))[0])]
        first = np.asarray(Image.open(tar.extractfile(member)).convert("RGB"))
    label = classes.index(member.name.lstrip("./").split("/")[1])
    images, labels = read_beton(out / "cifar10_train.beton", np.arange(1))
    np.testing.assert_array_equal(images[0], first)
    assert labels[0] == label
