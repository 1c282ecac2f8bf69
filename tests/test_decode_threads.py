"""Image-folder decoding inside a process that already runs threads: no fork, no hang, a deadline per chunk.

A forked decoding worker can inherit a lock that another thread held at the fork and wait on it forever
(`make test` once hung 38 minutes that way). The decoder now uses threads; these tests run the conversion's
reading step 20 times in a row while other threads hold locks and decode images themselves, and check
that nothing forks, every chunk is decoded off the main thread, and every result is pixel-exact.
"""

from __future__ import annotations

import io
import os
import threading
import time

import numpy as np
import pytest
from PIL import Image

from data_prep import DataPrepError, image_folder
from tests.data_prep_helpers import in_written_order, make_image_folder, make_tar

FORKS: list[int] = []  # pids that forked while WATCHING is set (os.register_at_fork cannot be undone)
WATCHING = threading.Event()
os.register_at_fork(before=lambda: FORKS.append(os.getpid()) if WATCHING.is_set() else None)


class BusyThreads:
    """Threads that keep a lock held most of the time and decode PNGs with PIL, until stopped."""

    def __init__(self, n: int = 3) -> None:
        self.stop = threading.Event()
        self.lock = threading.Lock()
        buf = io.BytesIO()
        Image.fromarray(np.full((32, 32, 3), 7, np.uint8)).save(buf, format="PNG")
        self.png = buf.getvalue()
        self.loops = 0
        self.threads = [threading.Thread(target=self._hold, daemon=True, name="hold-lock")]
        self.threads += [threading.Thread(target=self._decode, daemon=True, name=f"decode-{i}") for i in range(n - 1)]

    def _hold(self) -> None:
        while not self.stop.is_set():
            with self.lock:
                time.sleep(0.002)

    def _decode(self) -> None:
        while not self.stop.is_set():
            with Image.open(io.BytesIO(self.png)) as im:
                im.load()
            self.loops += 1

    def __enter__(self) -> BusyThreads:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=10)


def test_conversion_20_times_in_a_threaded_process_never_forks(tmp_path, monkeypatch):
    expected = in_written_order(make_image_folder(tmp_path / "tree", n_train=5, n_test=3))  # 15 + 9 images
    archive = make_tar(tmp_path / "tree", tmp_path / "tiny.tar.gz", arcname="")
    monkeypatch.setattr(image_folder, "DECODE_CHUNK", 4)  # several chunks, so the pool does the decoding
    decoded_on: list[str] = []
    real_decode = image_folder._decode_chunk

    def recording(chunk):
        decoded_on.append(threading.current_thread().name)
        return real_decode(chunk)

    monkeypatch.setattr(image_folder, "_decode_chunk", recording)
    started = time.monotonic()
    with BusyThreads() as busy:
        assert threading.active_count() >= 4
        WATCHING.set()
        try:
            for i in range(20):
                read = image_folder.read_image_folder_tar if i % 2 == 0 else image_folder.read_image_folder
                data = read(archive if i % 2 == 0 else tmp_path / "tree", num_workers=2, progress=False)
                for split in ("train", "test"):
                    images, labels = expected.split(split)
                    np.testing.assert_array_equal(data.split(split).images, images)
                    np.testing.assert_array_equal(data.split(split).labels, labels)
        finally:
            WATCHING.clear()
        assert busy.loops > 0  # the other threads really ran alongside
    assert FORKS == []
    assert len(decoded_on) == 20 * 6  # 24 images in chunks of 4, every run
    assert "MainThread" not in decoded_on
    assert time.monotonic() - started < 60


def test_a_stuck_decoder_is_an_error_within_its_deadline(tmp_path, monkeypatch):
    make_image_folder(tmp_path / "tree", n_train=5, n_test=3)
    archive = make_tar(tmp_path / "tree", tmp_path / "tiny.tar.gz", arcname="")
    release = threading.Event()
    monkeypatch.setattr(image_folder, "DECODE_CHUNK", 4)
    monkeypatch.setattr(image_folder, "DECODE_DEADLINE", 0.5)
    monkeypatch.setattr(image_folder, "_decode_chunk", lambda chunk: release.wait(30))
    started = time.monotonic()
    try:
        with pytest.raises(DataPrepError, match=r"tiny\.tar\.gz:test/cat/000\.png: expected 4 images from here on "
                                                r"decoded within 0\.5 s, found their decoding thread still busy"):
            image_folder.read_image_folder_tar(archive, num_workers=2, progress=False)
        assert time.monotonic() - started < 10
    finally:
        release.set()
