"""Issue 11 (readers): lose no user data, trust no input. Every bad input is made here, small,
and must give a one-line DataError naming the file; valid data must read as before."""

import contextlib
import gzip
import io
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
import tracemalloc
import uuid
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dsquant.data import (
    DataError,
    from_arrays,
    load_dataset,
    read_cifar_archive,
    read_features,
    read_idx,
    read_image_folder,
    read_image_tar,
    read_text_records,
)
from dsquant.data import images as images_mod


@contextlib.contextmanager
def _deadline(seconds=5):
    """Fail instead of hanging (a FIFO opened for reading blocks until a writer comes)."""

    def boom(*_):
        raise TimeoutError("reader hung")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _error(fn, *args, match, **kwargs) -> str:
    """The DataError message of fn(...): it must match and be one line."""
    with _deadline(), pytest.raises(DataError, match=match) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg and "Traceback" not in msg, msg
    return msg


def _save(path, im: Image.Image, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, fmt)
    return path


def _folder_of(tmp_path, im: Image.Image, name="x.png", fmt=None):
    root = tmp_path / f"ds{uuid.uuid4().hex[:6]}"
    _save(root / "a" / name, im, fmt)
    return root


def _decoded(tmp_path, im, name="x.png", fmt=None):
    return read_image_folder(_folder_of(tmp_path, im, name, fmt)).images[0]


# ----------------------------------------------------------------------------- 5: pixel modes


def test_16bit_images_scale_by_257_not_clip(tmp_path):
    grad = np.arange(256 * 256, dtype=np.uint16).reshape(256, 256)  # 0 .. 65535
    want = np.rint(grad / 257).astype(np.uint8)
    for arr, fmt, name in [(grad, None, "g.png"), (grad.astype(">u2"), None, "g.tif"), (grad, None, "g.pgm")]:
        got = _decoded(tmp_path, Image.fromarray(arr), name, fmt)[..., 0]
        assert np.array_equal(got, want), name  # was 99.6 % white (clipped at 255)
    # an 8-bit image stored as v * 257 comes back exactly
    eight = np.arange(256, dtype=np.uint16).reshape(16, 16)
    assert np.array_equal(_decoded(tmp_path, Image.fromarray(eight * 257))[..., 0], eight)
    # a dark 16-bit PGM (Pillow gives mode I) is still 16-bit
    assert _decoded(tmp_path, Image.fromarray(eight), "d.pgm").max() == 1
    # resizing works on the scaled image
    ds = read_image_folder(_folder_of(tmp_path, Image.fromarray(grad)), image_size=8)
    assert ds.images.shape == (1, 8, 8, 1) and 100 < ds.images.mean() < 155


def test_int32_images_follow_the_documented_rule(tmp_path):
    small = np.arange(64, dtype=np.int32).reshape(8, 8) * 4  # max 252: kept
    assert np.array_equal(_decoded(tmp_path, Image.fromarray(small), "i.tif")[..., 0], small)
    wide = np.arange(64, dtype=np.int32).reshape(8, 8) * 1000  # max 63000: 16-bit
    assert np.array_equal(_decoded(tmp_path, Image.fromarray(wide), "w.tif")[..., 0], np.rint(wide / 257))
    for bad, what in [(small + 70000, r"\[70000, 70252\]"), (small - 1, r"\[-1, 251\]")]:
        root = _folder_of(tmp_path, Image.fromarray(bad), "bad.tif")
        msg = _error(read_image_folder, root, match=f"bad.tif: I image values lie in {what}; expected")
        assert str(root) in msg


def test_float_images_follow_the_documented_rule(tmp_path):
    unit = np.linspace(0, 0.999, 64, dtype=np.float32).reshape(8, 8)  # was all zeros
    assert np.array_equal(_decoded(tmp_path, Image.fromarray(unit), "u.tif")[..., 0], np.rint(unit * 255))
    byte = np.linspace(0, 255, 64, dtype=np.float32).reshape(8, 8)
    assert np.array_equal(_decoded(tmp_path, Image.fromarray(byte), "b.tif")[..., 0], np.rint(byte))
    for bad, match in [(unit * 300 - 1, r"lie in \[-1, 298.7\]; expected \[0, 1\] or \[0, 255\]"), (unit + np.nan, "NaN")]:
        root = _folder_of(tmp_path, Image.fromarray(bad.astype(np.float32)), "bad.tif")
        _error(read_image_folder, root, match=f"bad.tif: float image.*{match}")


def test_other_modes_convert_sensibly(tmp_path):
    rgba = np.random.default_rng(0).integers(0, 256, (4, 5, 4), dtype=np.uint8)
    assert np.array_equal(_decoded(tmp_path, Image.fromarray(rgba)), rgba[..., :3])  # alpha dropped
    la = Image.fromarray(rgba[..., :2].copy(), "LA")
    assert np.array_equal(_decoded(tmp_path, la)[..., 0], rgba[..., 0])
    bits = Image.fromarray(rgba[..., 0] > 127)
    assert bits.mode == "1" and np.array_equal(_decoded(tmp_path, bits)[..., 0], np.where(rgba[..., 0] > 127, 255, 0))
    pal = Image.fromarray(rgba[..., :3]).quantize(8)
    assert np.array_equal(_decoded(tmp_path, pal), np.asarray(pal.convert("RGB")))
    cmyk = Image.fromarray(rgba, "CMYK")
    assert np.array_equal(_decoded(tmp_path, cmyk, "c.tif"), np.asarray(cmyk.convert("RGB")))


# ----------------------------------------------------------------------------- 6, 15: layout


def _png(seed=0, size=(4, 3)):
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def _tar_of(root: Path, path: Path, mode="w"):
    with tarfile.open(path, mode) as tar:
        for p in sorted(root.rglob("*")):
            tar.add(p, arcname=str(p.relative_to(root)), recursive=False)
    return path


@pytest.mark.parametrize("layout", ["plain", "split"])
def test_empty_class_folder_is_refused(tmp_path, layout):
    root = tmp_path / "ds"
    base = root / "train" if layout == "split" else root
    for c in ("ant", "cat"):
        (base / c).mkdir(parents=True)
        (base / c / "1.png").write_bytes(_png())
    (base / "bee").mkdir()  # empty: would shift cat from 2 to 1
    if layout == "split":
        (root / "test" / "ant").mkdir(parents=True)
        (root / "test" / "ant" / "1.png").write_bytes(_png())
    _error(read_image_folder, root, match=f"{base / 'bee'}: empty class folder")
    tar = _tar_of(root, tmp_path / "ds.tar")
    rel = "train/bee" if layout == "split" else "bee"
    _error(read_image_tar, tar, match=f"ds.tar:{rel}/: empty class folder")
    (base / "bee" / "notes.txt").write_text("no images here")  # no image files either
    _error(read_image_folder, root, match="bee: empty class folder")
    (base / "bee" / "1.png").write_bytes(_png())
    assert read_image_folder(root).classes == ["ant", "bee", "cat"]
    if layout == "split":  # the test split is read on its own (train's folders do not matter)
        assert read_image_folder(root, split="test").classes == ["ant"]


def _tar_bytes_and_members(tmp_path):
    root = tmp_path / "src"
    for c in ("a", "b"):
        for i in range(2):
            _save(root / c / f"{i}.png", Image.open(io.BytesIO(_png(i))))
    path = _tar_of(root, tmp_path / "whole.tar")
    with tarfile.open(path) as tar:
        members = tar.getmembers()
    return path.read_bytes(), members


def test_tar_cut_at_a_member_boundary_is_refused(tmp_path):
    data, members = _tar_bytes_and_members(tmp_path)
    last = members[-1]
    assert len(read_image_tar(tmp_path / "whole.tar")) == 4
    end_of_data = last.offset_data + -(-last.size // 512) * 512
    for cut in (last.offset, end_of_data):  # before the last header; before the end marker
        for suffix, pack in ((".tar", lambda b: b), (".tar.gz", gzip.compress)):
            path = tmp_path / f"cut{cut}{suffix}"
            path.write_bytes(pack(data[:cut]))
            _error(read_image_tar, path, match=f"{path.name}: truncated tar archive")
    # one zero block is enough; GNU tar's archives read too
    (tmp_path / "one.tar").write_bytes(data[:end_of_data] + bytes(512))
    assert len(read_image_tar(tmp_path / "one.tar")) == 4
    if shutil.which("tar"):
        subprocess.run(["tar", "-cf", str(tmp_path / "gnu.tar"), "-C", str(tmp_path / "src"), "a", "b"], check=True)
        assert read_image_tar(tmp_path / "gnu.tar").labels.tolist() == [0, 0, 1, 1]


def test_non_utf8_class_folder_is_refused(tmp_path):
    root = tmp_path / "ds"
    (root / "ok").mkdir(parents=True)
    (root / "ok" / "1.png").write_bytes(_png())
    bad = os.path.join(os.fsencode(root), b"caf\xe9")
    os.mkdir(bad)
    with open(os.path.join(bad, b"1.png"), "wb") as f:
        f.write(_png())
    _error(read_image_folder, root, match=r"class folder name b'caf\\xe9' is not valid UTF-8")
    _error(read_image_tar, _tar_of(root, tmp_path / "ds.tar"), match=r"ds.tar: class folder name b'caf\\xe9'")


def test_decode_errors_name_the_file_not_a_buffer(tmp_path):
    root = tmp_path / "ds"
    (root / "a").mkdir(parents=True)
    (root / "a" / "1.png").write_bytes(_png())
    (root / "a" / "bad.jpg").write_bytes(b"not a jpeg")
    (root / "a" / "cut.png").write_bytes(_png()[:40])
    for p in (root / "a" / "bad.jpg", root / "a" / "cut.png"):
        other = root / "a" / ("cut.png" if p.name == "bad.jpg" else "bad.jpg")
        os.rename(other, tmp_path / "aside")
        msg = _error(read_image_folder, root, match=f"{p}: cannot decode image")
        assert "BytesIO" not in msg
        os.rename(tmp_path / "aside", other)
    (root / "a" / "cut.png").unlink()
    msg = _error(read_image_tar, _tar_of(root, tmp_path / "ds.tar"), match=r"ds.tar:a/bad.jpg: cannot decode image \(not a recognised")
    assert "BytesIO" not in msg


# ----------------------------------------------------------------------------- 11: files


def test_non_regular_files_are_refused_without_hanging(tmp_path):
    root = tmp_path / "ds"
    (root / "a").mkdir(parents=True)
    (root / "a" / "1.png").write_bytes(_png())
    os.mkfifo(root / "a" / "fifo.jpg")
    _error(read_image_folder, root, match="fifo.jpg: is a FIFO; expected a regular file")
    (root / "a" / "fifo.jpg").unlink()
    os.symlink("/dev/zero", root / "a" / "zero.jpg")
    _error(read_image_folder, root, match="zero.jpg: is a character device; expected a regular file")
    (root / "a" / "zero.jpg").unlink()
    os.symlink(root / "a" / "1.png", root / "a" / "link.png")  # a link to a regular file is fine
    assert len(read_image_folder(root)) == 2
    for name in ("d.jsonl", "f.npy", "f.npz", "d.tar", "train-images-idx3-ubyte"):
        os.mkfifo(tmp_path / name)
        _error(load_dataset, tmp_path / name, match=f"{name}: is a FIFO")
    _error(read_text_records, tmp_path / "d.jsonl", match="d.jsonl: is a FIFO")
    _error(read_features, tmp_path / "f.npy", match="f.npy: is a FIFO")
    np.save(tmp_path / "x.npy", np.zeros((2, 2), np.float32))
    _error(read_features, tmp_path / "x.npy", labels=tmp_path / "f.npy", match="f.npy: is a FIFO")
    idx = tmp_path / "idx"
    idx.mkdir()
    (idx / "train-images-idx3-ubyte").write_bytes(bytes([0, 0, 8, 3]) + b"".join(n.to_bytes(4, "big") for n in (1, 2, 2)) + bytes(4))
    os.mkfifo(idx / "train-labels-idx1-ubyte")
    _error(read_idx, idx, match="train-labels-idx1-ubyte: is a FIFO")
    cifar = tmp_path / "cifar-10-batches-py"
    cifar.mkdir()
    os.mkfifo(cifar / "data_batch_1")
    _error(read_cifar_archive, cifar, match="data_batch_1: is a FIFO")


def test_image_bytes_are_capped_before_reading(tmp_path, monkeypatch):
    root = tmp_path / "ds"
    (root / "a").mkdir(parents=True)
    (root / "a" / "1.png").write_bytes(_png())
    monkeypatch.setattr(images_mod, "MAX_IMAGE_BYTES", 50)
    _error(read_image_folder, root, match=r"1.png: \d+ bytes is more than the 50-byte limit for an image file")
    tar = _tar_of(root, tmp_path / "ds.tar.gz", "w:gz")
    _error(read_image_tar, tar, match=r"ds.tar.gz:a/1.png: \d+ bytes is more than the 50-byte limit")


def test_decompression_bomb_warning_is_an_error(tmp_path, monkeypatch):
    root = _folder_of(tmp_path, Image.new("L", (20, 20)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300)  # 400 pixels: Pillow only warns
    _error(read_image_folder, root, match="x.png: cannot decode image .*exceeds limit of 300 pixels")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # above twice the limit: Pillow's error
    _error(read_image_folder, root, match="x.png: cannot decode image .*exceeds limit")


def _idx(dims, code=0x08, data=b""):
    return bytes([0, 0, code, len(dims)]) + b"".join(int(n).to_bytes(4, "big") for n in dims) + data


def test_idx_header_is_checked_before_reading(tmp_path):
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx([1], data=b"\x00"))
    huge = [2**32 - 1] * 3
    (tmp_path / "train-images-idx3-ubyte").write_bytes(_idx(huge, data=bytes(16)))
    _error(read_idx, tmp_path, match=r"train-images-idx3-ubyte: IDX header announces \[4294967295, 4294967295, 4294967295\] \(\d+ bytes of data\) but the file holds 16")
    gz = tmp_path / "g" / "train-images-idx3-ubyte.gz"
    gz.parent.mkdir()
    (gz.parent / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx([1], data=b"\x00")))
    gz.write_bytes(gzip.compress(_idx([60000, 28, 28], data=bytes(10))))
    _error(read_idx, gz, match=r"IDX header announces \[60000, 28, 28\] \(47040000 bytes of data\) but a \d+-byte gzip file cannot hold that much")
    # a gzip bomb behind a small header is not decompressed whole
    gz.write_bytes(gzip.compress(_idx([1, 10, 10], data=bytes(20 << 20))))
    tracemalloc.start()
    try:
        _error(read_idx, gz, match=r"announces \[1, 10, 10\] \(100 bytes of data\) but the file holds more")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 5 << 20, peak


def _npy_header(shape, descr="<f4"):
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def test_numpy_headers_are_checked_before_reading(tmp_path):
    shape = (10**6, 10**6)
    (tmp_path / "l.npy").write_bytes(_npy_header(shape, "<i8") + bytes(64))
    np.save(tmp_path / "f.npy", np.zeros((4, 2), np.float32))
    _error(read_features, tmp_path / "f.npy", labels=tmp_path / "l.npy", match=r"l.npy: header announces shape \(1000000, 1000000\) of int64 \(8000000000000 bytes\) but holds 64")
    with zipfile.ZipFile(tmp_path / "z.npz", "w") as z:
        z.writestr("features.npy", _npy_header(shape) + bytes(64))
    _error(read_features, tmp_path / "z.npz", match=r"z.npz:features.npy: header announces shape \(1000000, 1000000\)")


def _cifar_tar(path, batch, meta=True):
    with tarfile.open(path, "w:gz") as tar:
        files = {"cifar-10-batches-py/data_batch_1": batch, "cifar-10-batches-py/test_batch": batch}
        if meta:
            files["cifar-10-batches-py/batches.meta"] = {"label_names": [f"c{i}" for i in range(10)]}
        for name, obj in files.items():
            data = obj if isinstance(obj, bytes) else pickle.dumps(obj, protocol=2)
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


class _SharedRows:
    """Pickles as numpy.ndarray(shape, uint8, one_row, 0, strides=(0, 1)): 300,000 rows over
    one 3,072-byte row."""

    def __reduce__(self):
        return (np.ndarray, ((300_000, 3072), np.dtype(np.uint8), bytes(3072), 0, (0, 1)))


def test_cifar_shared_rows_are_refused_before_copying(tmp_path):
    row = list(range(256)) * 12  # 3,072 Python ints, pickled once and referenced 300,000 times
    batch = {"data": [row] * 300_000, "labels": [0] * 300_000}
    path = _cifar_tar(tmp_path / "cifar-10-python.tar.gz", batch)
    assert path.stat().st_size < 1 << 20
    _error(read_cifar_archive, path, match="data_batch_1: 'data' must be a uint8 array .*got list")
    path = _cifar_tar(tmp_path / "view.tar.gz", {"data": _SharedRows(), "labels": [0] * 300_000})
    _error(read_cifar_archive, path, match=r"data_batch_1: 'data' \(300000, 3072\) is a view of \d+ bytes")
    ok = np.zeros((2, 3072), np.uint8)
    for labels in ([0], [0, "x"], [[0] * 10**6] * 2):  # wrong count, not integers, nested rows
        _error(read_cifar_archive, _cifar_tar(tmp_path / "l.tar.gz", {"data": ok, "labels": labels}), match="'labels' must be 2 integers")


def test_cifar_members_are_capped(tmp_path, monkeypatch):
    path = _cifar_tar(tmp_path / "c.tar.gz", {"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1]})
    assert len(read_cifar_archive(path)) == 2
    monkeypatch.setattr(images_mod, "MAX_PICKLE_BYTES", 1000)
    _error(read_cifar_archive, path, match=r"c.tar.gz:cifar-10-batches-py/.*: \d+ bytes is more than the 1000-byte limit for a CIFAR batch")


# ----------------------------------------------------------------------------- 10: labels


def test_one_huge_label_does_not_make_billions_of_classes(tmp_path):
    imgs = np.zeros((3, 2, 2), np.uint8)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(_idx([3, 2, 2], data=imgs.tobytes()))
    lab = np.array([7, 2**31 - 1, 7], ">i4")
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx([3], 0x0C, lab.tobytes()))
    ds = read_idx(tmp_path)
    assert ds.classes == ["7", "2147483647"] and ds.labels.tolist() == [0, 1, 0]
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx([3], 0x09, np.array([1, -3, 0], np.int8).tobytes()))
    _error(read_idx, tmp_path, match="train-labels-idx1-ubyte: label -3 is negative")

    np.save(tmp_path / "f.npy", np.zeros((3, 2), np.float32))
    np.save(tmp_path / "l.npy", np.array([2**40, 5, 5]))
    ds = read_features(tmp_path / "f.npy", labels=tmp_path / "l.npy")
    assert ds.classes == ["5", "1099511627776"] and ds.labels.tolist() == [1, 0, 0]
    np.save(tmp_path / "l.npy", np.array([0, -1, 1]))
    _error(read_features, tmp_path / "f.npy", labels=tmp_path / "l.npy", match="l.npy: label -1 is negative")

    batch = {"data": np.zeros((2, 3072), np.uint8), "labels": [2**31 - 1, 3]}
    ds = read_cifar_archive(_cifar_tar(tmp_path / "c.tar.gz", batch, meta=False))
    assert ds.classes == ["3", "2147483647"] and ds.labels.tolist() == [1, 0]
    batch["labels"] = [-5, 3]
    _error(read_cifar_archive, _cifar_tar(tmp_path / "n.tar.gz", batch, meta=False), match="n.tar.gz: label -5 is negative")
    assert from_arrays(np.zeros((2, 2, 2), np.uint8), [0, 10**12]).classes == ["0", "1000000000000"]


def test_normal_labels_keep_their_ids(tmp_path):
    labels = np.arange(10).repeat(3)
    ds = from_arrays(np.zeros((30, 2, 2), np.uint8), labels)
    assert ds.classes == [str(i) for i in range(10)] and np.array_equal(ds.labels, labels)
    gap = from_arrays(np.zeros((2, 2, 2), np.uint8), [0, 2])  # one class absent: ids kept
    assert gap.classes == ["0", "1", "2"] and gap.labels.tolist() == [0, 2]
    np.savez(tmp_path / "f.npz", features=np.zeros((3, 2)), labels=np.array([1, 0, 1]))
    assert read_features(tmp_path / "f.npz").classes == ["0", "1"]


# ----------------------------------------------------------------------------- 6c: features


def test_features_must_be_real_numbers(tmp_path):
    for dtype in (np.complex64, np.complex128, np.bool_):
        np.save(tmp_path / "f.npy", np.ones((3, 2), dtype))
        _error(read_features, tmp_path / "f.npy", match=f"f.npy: features must be real numbers \\(integers or floats\\), got dtype {np.dtype(dtype)}")
    for dtype in (np.int16, np.float16, np.float64):
        np.save(tmp_path / "f.npy", np.ones((3, 2), dtype))
        assert read_features(tmp_path / "f.npy").features.dtype == dtype


# ----------------------------------------------------------------------------- 6d, 15: text


def _jsonl(path, *lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_text_fields_must_be_strings(tmp_path):
    ok = '{"instruction": "Q", "input": "", "output": "A"}'
    path = _jsonl(tmp_path / "d.jsonl", ok, "", '{"instruction": "Q", "input": null, "output": 12345}')
    _error(read_text_records, path, match=r"d.jsonl: record 2 \(line 3\): field 'output' must be a string, got a number \(12345\)")
    for value, kind in [("null", "null"), ('{"a": 1}', "an object"), ("[1]", "an array"), ("true", "a boolean")]:
        _jsonl(path, ok, f'{{"instruction": {value}, "input": "", "output": "A"}}')
        _error(read_text_records, path, match=f"record 2 \\(line 2\\): field 'instruction' must be a string, got {kind}")
    # null or missing optional fields count as empty, in the default text and in templates
    _jsonl(path, '{"instruction": "Q", "input": null, "output": "A"}', '{"instruction": "R", "output": "B"}')
    assert read_text_records(path).texts == ["Q A", "R B"]
    assert read_text_records(path, template="{instruction}|{input}").texts == ["Q|", "R|"]
    arr = tmp_path / "d.json"
    arr.write_text(json.dumps([{"text": "a"}, {"text": 5}]))
    _error(read_text_records, arr, match=r"d.json: record 2: field 'text' must be a string, got a number")
    _error(read_text_records, path, template="{instruction} {output} {n}", match="record 1 has no field 'n'")


def test_group_values_are_strings_or_integers(tmp_path):
    path = _jsonl(tmp_path / "g.jsonl", '{"text": "a", "g": 2}', '{"text": "b", "g": "x"}', '{"text": "c", "g": 10}')
    ds = read_text_records(path, group_by="g")
    assert ds.classes == ["10", "2", "x"] and ds.labels.tolist() == [1, 2, 0]
    for value, kind in [("1.5", r"a number \(1.5\)"), ("true", "a boolean"), ("null", "null"), ('{"k": 1}', "an object"), ('"\\ud800"', "lone surrogate")]:
        _jsonl(path, '{"text": "a", "g": 2}', f'{{"text": "b", "g": {value}}}')
        _error(read_text_records, path, group_by="g", match=f"g.jsonl: record 2 \\(line 2\\): group field 'g' .*{kind}")


@pytest.mark.parametrize("template", ["{text.foo}", "{text[999]}", "{text!r}", "{text:>30}", "{}", "{0}", "{text"])
def test_templates_take_plain_field_names_only(tmp_path, template):
    path = _jsonl(tmp_path / "t.jsonl", '{"text": "abc"}')
    msg = _error(read_text_records, path, template=template, match="template")
    assert repr(template) in msg


def test_lone_surrogates_are_replaced_in_the_embedded_text(tmp_path):
    path = _jsonl(tmp_path / "s.jsonl", '{"text": "a\\ud800b"}', '{"text": "\\ud83d\\ude00 ok"}')
    ds = read_text_records(path)
    assert ds.texts == ["a\ufffdb", "\U0001F600 ok"] and ds.records[0]["text"] == "a\ud800b"
    for t in ds.texts:
        t.encode("utf-8")
    arr = tmp_path / "s.json"
    arr.write_text('[{"text": "a\\ud800b"}]')
    out = tmp_path / "out.jsonl"
    read_text_records(arr).write_subset(np.array([0]), out)
    assert json.loads(out.read_text())["text"] == "a\ud800b"


def test_deep_json_is_a_one_line_error(tmp_path):
    deep = "[" * 200_000 + "]" * 200_000
    path = _jsonl(tmp_path / "d.jsonl", '{"text": "a"}', '{"text": ' + deep + "}")
    _error(read_text_records, path, match="d.jsonl: line 2: JSON nested too deeply")
    arr = tmp_path / "d.json"
    arr.write_text('[{"text": ' + deep + "}]")
    _error(read_text_records, arr, match="d.json: JSON nested too deeply")


def test_byte_order_mark_is_accepted(tmp_path):
    recs = [{"text": "a"}, {"text": "b"}]
    arr = tmp_path / "b.json"
    arr.write_bytes(b"\xef\xbb\xbf" + json.dumps(recs).encode())
    assert read_text_records(arr).records == recs
    lines = tmp_path / "b.jsonl.gz"
    lines.write_bytes(gzip.compress(b"\xef\xbb\xbf" + b"".join(json.dumps(r).encode() + b"\n" for r in recs)))
    ds = read_text_records(lines)
    assert ds.records == recs and ds.raw_lines[0] == b'{"text": "a"}\n'


# ----------------------------------------------------------------------------- 13: pool workers


def test_parallel_decode_matches_serial(tmp_path, monkeypatch):
    root = tmp_path / "ds"
    for i in range(7):
        _save(root / f"c{i % 2}" / f"{i}.png", Image.open(io.BytesIO(_png(i))))
    serial = read_image_folder(root)
    monkeypatch.setattr(images_mod, "DECODE_CHUNK", 2)
    parallel = read_image_folder(root)
    assert np.array_equal(serial.images, parallel.images) and serial.labels.tolist() == parallel.labels.tolist()


def _marked(marker: str) -> list[int]:
    """Live processes whose environment holds ``marker``."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if marker.encode() in (d / "environ").read_bytes() and (d / "stat").read_text().split(") ")[1][0] != "Z":
                    pids.append(int(d.name))
            except OSError:
                pass
    return pids


@pytest.mark.skipif(not Path("/proc/self/environ").exists() or (os.cpu_count() or 1) < 2, reason="needs Linux /proc and 2 cores")
def test_pool_workers_exit_when_the_main_process_is_killed(tmp_path):
    script = textwrap.dedent(
        """
        import io, time
        import numpy as np
        from PIL import Image
        from dsquant.data import images

        images.DECODE_CHUNK = 1
        buf = io.BytesIO()
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(buf, "PNG")
        png = buf.getvalue()

        def stall():  # the main process stops here while the pool is up
            print("ready", flush=True)
            time.sleep(600)

        images._decode_all([("a", lambda: png), ("b", lambda: png), ("c", stall)], "x", None, False)
        """
    )
    marker = f"DSQUANT_TEST_{uuid.uuid4().hex}"
    env = {**os.environ, marker: "1"}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        with _deadline(60):
            assert proc.stdout.readline() == b"ready\n"
        deadline = time.monotonic() + 10
        while len(_marked(marker)) < 3 and time.monotonic() < deadline:  # main, forkserver, workers
            time.sleep(0.1)
        assert len(_marked(marker)) >= 3
        time.sleep(0.5)  # let the workers run their initializer
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 8
        while _marked(marker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _marked(marker) == []
    finally:
        proc.kill()
        for pid in _marked(marker):  # only the processes this test started
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
