"""The kept-patch file (``.dsqp``): version 2 written and read, version 1 read, damaged files
refused with one line that names them, the lossy mode's error, the source files' bytes."""

import hashlib
import io
import json
import struct
import tarfile

import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from dsquant.data import read_idx, read_image_folder, read_image_tar
from dsquant.pixels import Codec, PatchStore, keep_masks, kept_psnr, png_bytes, source_file_bytes
from dsquant.pixels import store as store_module


def _smooth_images(rng, n, h=32, w=32, c=3):
    """Natural-ish images: one smooth pattern per image, channels correlated, a little noise."""
    y, x = np.mgrid[0:h, 0:w] / h
    f = rng.uniform(0.3, 1.5, (n, 1, 1, 1))
    phase = rng.uniform(0, 6, (n, 1, 1, 1))
    base = np.sin(2 * np.pi * f * (x[None, ..., None] + 0.5 * y[None, ..., None]) + phase)
    img = 127 + rng.uniform(60, 100, (n, 1, 1, c)) * base + rng.uniform(-20, 20, (n, 1, 1, c))
    return np.clip(img + rng.normal(0, 1, img.shape), 0, 255).astype(np.uint8)


def _store(rng, n=40, h=32, w=32, c=3, patch=4, drop=0.2, noise=False):
    images = rng.integers(0, 256, (n, h, w, c), dtype=np.uint8) if noise else _smooth_images(rng, n, h, w, c)
    masks = keep_masks(rng.random((n, h // patch, w // patch)), drop)
    indices = rng.permutation(10 * n)[:n]
    return PatchStore.from_images(images, rng.integers(0, 3, n), indices, masks, patch, ["cat", "dog", "émeu"], {"source": "test", "x": [1, 2]}), images


def _same(a: PatchStore, b: PatchStore, pixels: bool = True) -> bool:
    return (
        np.array_equal(a.indices, b.indices)
        and np.array_equal(a.labels, b.labels)
        and np.array_equal(a.masks, b.masks)
        and (not pixels or np.array_equal(a.patches, b.patches))
        and a.patch == b.patch
        and tuple(a.image_shape) == tuple(b.image_shape)
        and a.classes == b.classes
        and a.meta == b.meta
    )


def v1_bytes(store: PatchStore) -> bytes:
    """A version-1 file, as dsquant wrote it before format version 2 (the old ``to_bytes``,
    unchanged; checked once byte for byte against the old code)."""
    body = io.BytesIO()
    sections = []
    n = len(store)
    packed = np.packbits(store.masks.reshape(n, -1), axis=1, bitorder="little")
    for name, arr in [("indices", store.indices.astype("<i8")), ("labels", store.labels.astype("<i8")), ("masks", packed), ("patches", store.patches.astype(np.uint8))]:
        arr = np.ascontiguousarray(arr)
        sections.append({"name": name, "dtype": arr.dtype.str, "shape": list(arr.shape), "offset": body.tell(), "nbytes": arr.nbytes})
        body.write(arr.tobytes())
    payload = body.getvalue()
    header = {
        "n": n, "image_shape": list(store.image_shape), "patch": store.patch, "grid": list(store.grid),
        "kept_per_image": int(store.patches.shape[1]) if n else 0, "classes": store.classes, "meta": store.meta,
        "sections": sections, "sha256": hashlib.sha256(payload).hexdigest(),
    }
    head = json.dumps(header).encode("utf-8")
    return b"DSQP" + struct.pack("<HI", 1, len(head)) + head + payload


def _split(data: bytes) -> tuple[dict, bytes]:
    hlen = struct.unpack("<I", data[6:10])[0]
    return json.loads(data[10 : 10 + hlen]), data[10 + hlen :]


def _join(header, payload: bytes, version: int = 2, rehash: bool = False) -> bytes:
    if rehash and isinstance(header, dict):
        header = {**header, "sha256": hashlib.sha256(payload).hexdigest()}
    head = json.dumps(header).encode()
    return b"DSQP" + struct.pack("<HI", version, len(head)) + head + payload


# ---------------------------------------------------------------------------- version 2


@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("codec", ["webp", "png"])
def test_lossless_round_trip_is_bit_exact_across_tiles(tmp_path, rng, monkeypatch, channels, codec):
    # 3 images a tile: 40 images make 14 tiles, the last one partial
    monkeypatch.setattr(store_module, "TILE_PIXELS", 3 * 32 * 32)
    store, images = _store(rng, c=channels)
    n = store.save(tmp_path / "p.dsqp", codec)
    data = (tmp_path / "p.dsqp").read_bytes()
    header, _ = _split(data)
    assert data[:4] == b"DSQP" and struct.unpack("<H", data[4:6])[0] == 2 and n == len(data)
    assert [t["count"] for t in header["tiles"]] == [3] * 13 + [1]
    back = PatchStore.load(tmp_path / "p.dsqp")
    assert _same(store, back) and back.codec["version"] == 2 and back.codec["name"] == codec and back.codec["lossless"]
    # the kept pixels of every image are its own, in place
    keep = back.pixel_masks()
    assert np.array_equal(back.with_holes()[keep], images[keep])
    assert kept_psnr(store, back) == float("inf")
    assert list((tmp_path).iterdir()) == [tmp_path / "p.dsqp"]  # no temporary file left


def test_lossless_webp_is_smaller_than_raw_kept_pixels_and_whole_pngs(rng):
    store, images = _store(rng)
    size = len(store.to_bytes())
    # smooth images: WebP of the kept patches well under the raw kept pixels and the PNGs
    assert size < 0.6 * store.patches.nbytes
    assert size < 0.8 * png_bytes(images)
    # noise does not compress, but the file stays within a little of the raw pixels
    noisy, _ = _store(rng, noise=True)
    assert len(noisy.to_bytes()) < noisy.patches.nbytes * 1.05 + 2000


def test_lossy_mode_error_is_bounded_and_bytes_fall_with_quality(rng):
    store, _ = _store(rng)
    lossless = len(store.to_bytes())
    for codec in ("webp", "jpeg"):
        files = {q: store.to_bytes(codec, q) for q in (30, 90)}
        backs = {q: PatchStore.from_bytes(b) for q, b in files.items()}
        psnr = {q: kept_psnr(store, b) for q, b in backs.items()}
        assert all(_same(store, b, pixels=False) for b in backs.values())  # indices, masks exact
        assert len(files[30]) < len(files[90]) < 0.3 * lossless
        assert psnr[90] >= 38.0 and 28.0 <= psnr[30] < psnr[90]
        assert backs[90].codec == {"version": 2, "name": codec, "lossless": False, "quality": 90, **({"effort": 4} if codec == "webp" else {})}
    gray, _ = _store(rng, c=1)
    assert kept_psnr(gray, PatchStore.from_bytes(gray.to_bytes("webp", 90))) >= 40.0


def test_empty_store_and_one_image_round_trip(rng):
    store, _ = _store(rng, n=1, h=8, w=12, patch=4, drop=0.5)
    assert _same(store, PatchStore.from_bytes(store.to_bytes()))
    empty = PatchStore.from_images(np.zeros((0, 8, 8, 3), np.uint8), np.zeros(0), np.zeros(0), np.zeros((0, 2, 2), bool), 4, ["a"])
    back = PatchStore.from_bytes(empty.to_bytes())
    assert len(back) == 0 and back.patches.shape == (0, 0, 4, 4, 3)


@pytest.mark.parametrize(
    "args, message",
    [
        (("gif", None), "codec: expected one of"),
        (("png", 80), "png is lossless only"),
        (("jpeg", None), "jpeg is lossy only"),
        (("webp", 0), r"quality: expected an integer in \[1, 100\]"),
        (("webp", 101), r"quality: expected an integer in \[1, 100\]"),
        (("webp", True), "quality: expected"),
        (("webp", None, 7), r"effort: expected an integer in \[0, 6\]"),
    ],
)
def test_codec_refuses_bad_settings(args, message):
    with pytest.raises(ValueError, match=message):
        Codec(*args)


def test_save_is_atomic(tmp_path, rng, monkeypatch):
    store, _ = _store(rng, n=4)
    path = tmp_path / "p.dsqp"
    path.write_bytes(b"old")

    def broken_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store_module.os, "fsync", broken_fsync)
    with pytest.raises(OSError):
        store.save(path)
    assert path.read_bytes() == b"old" and list(tmp_path.iterdir()) == [path]


# ---------------------------------------------------------------------------- version 1


def test_reads_version_1_files(tmp_path, rng):
    store, images = _store(rng, n=7, c=3)
    (tmp_path / "old.dsqp").write_bytes(v1_bytes(store))
    back = PatchStore.load(tmp_path / "old.dsqp")
    assert _same(store, back) and back.codec == {"version": 1, "name": "raw", "lossless": True, "quality": None}
    # and writes it again as version 2, the same store
    back.save(tmp_path / "new.dsqp")
    assert _same(store, PatchStore.load(tmp_path / "new.dsqp"))
    gray, _ = _store(rng, n=3, h=8, w=8, c=1, patch=2, drop=0.25)
    assert _same(gray, PatchStore.from_bytes(v1_bytes(gray)))


# ---------------------------------------------------------------------------- damaged files


def _damaged(data: bytes) -> dict[str, bytes]:
    header, payload = _split(data)
    body = len(data) - len(payload)
    flip = lambda b, i: b[:i] + bytes([b[i] ^ 0x01]) + b[i + 1 :]  # noqa: E731
    return {
        "empty": b"",
        "cut in the magic": data[:3],
        "cut in the fixed header": data[:8],
        "cut in the header": data[: body - 20],
        "cut after the header": data[:body],
        "cut in the body": data[: body + len(payload) // 2],
        "last byte missing": data[:-1],
        "a body byte flipped": flip(data, body + len(payload) // 2),
        "the last byte flipped": flip(data, len(data) - 1),
        "a header byte flipped": flip(data, 20),
        "bad magic": b"DSQX" + data[4:],
        "unknown version": data[:4] + struct.pack("<H", 9) + data[6:],
        "a byte added": data + b"\0",
    }


@pytest.mark.parametrize("version", [1, 2])
def test_damaged_or_truncated_files_give_one_line_errors_naming_them(tmp_path, rng, version):
    store, _ = _store(rng, n=6)
    data = v1_bytes(store) if version == 1 else store.to_bytes()
    for what, bad in _damaged(data).items():
        path = tmp_path / f"bad-{version}.dsqp"
        path.write_bytes(bad)
        with pytest.raises(ValueError) as exc:
            PatchStore.load(path)
        text = str(exc.value)
        assert text.startswith(f"{path}: ") and "\n" not in text, (what, text)
    path.write_bytes(data[:-1])
    with pytest.raises(ValueError, match="checksum mismatch"):
        PatchStore.load(path)


@pytest.mark.parametrize("version", [1, 2])
def test_iter_load_gives_the_file_a_tile_at_a_time(tmp_path, rng, version, monkeypatch):
    monkeypatch.setattr(store_module, "TILE_PIXELS", 4 * 32 * 32)  # 4 images per tile
    store, _ = _store(rng, n=10)
    path = tmp_path / "s.dsqp"
    path.write_bytes(v1_bytes(store) if version == 1 else store.to_bytes())
    chunks = list(PatchStore.iter_load(path))
    assert [len(c) for c in chunks] == ([10] if version == 1 else [4, 4, 2])
    whole = PatchStore(*(np.concatenate([getattr(c, a) for c in chunks]) for a in ("indices", "labels", "masks", "patches")), store.patch, store.image_shape, store.classes, store.meta)
    assert _same(whole, store) and chunks[-1].codec == PatchStore.load(path).codec
    for what, bad in _damaged(path.read_bytes()).items():  # every check of load, one line naming the file
        path.write_bytes(bad)
        with pytest.raises(ValueError) as exc:
            list(PatchStore.iter_load(path))
        assert str(exc.value).startswith(f"{path}: ") and "\n" not in str(exc.value), (what, str(exc.value))


def test_malformed_headers_are_refused_before_decoding(tmp_path, rng, monkeypatch):
    """A header with a valid checksum can still lie; it is checked against the caps, the body
    and each tile's own header before anything is decoded."""
    store, _ = _store(rng, n=6)
    header, payload = _split(store.to_bytes())
    png = io.BytesIO()
    Image.fromarray(np.zeros((6 * 32, 32, 3), np.uint8)).save(png, "PNG")
    swapped = payload[: header["tiles"][0]["offset"]] + png.getvalue()
    webp = io.BytesIO()
    Image.fromarray(np.zeros((5 * 32, 32, 3), np.uint8)).save(webp, "WEBP", lossless=True)
    small = webp.getvalue()
    cases = {
        "above the cap": ({**header, "n": 10**9}, payload, "above the cap"),
        "too wide": ({**header, "image_shape": [32, 40000, 3], "grid": [8, 10000]}, payload, "outside the caps"),
        "grid": ({**header, "grid": [4, 4]}, payload, "header field 'grid'"),
        "kept": ({**header, "kept_per_image": 50}, payload, "do not keep 50 patches"),
        "tile counts": ({**header, "tiles": [{**header["tiles"][0], "count": 5}]}, payload, "summing to 6"),
        "tile outside": ({**header, "tiles": [{**header["tiles"][0], "nbytes": 10**9}]}, payload, "tile 0 lies outside the body"),
        "section outside": ({**header, "sections": [{**s, "offset": -5} for s in header["sections"]]}, payload, "lies outside the body"),
        "section size": ({**header, "sections": [{**s, "raw_nbytes": 1} for s in header["sections"]]}, payload, "expected zlib holding"),
        "codec": ({**header, "codec": {"name": "bmp"}}, payload, "unknown codec"),
        "another format in a tile": ({**header, "tiles": [{"offset": header["tiles"][0]["offset"], "nbytes": len(png.getvalue()), "count": 6}]}, swapped, "cannot be decoded as WEBP"),
        "a tile of another size": ({**header, "tiles": [{"offset": header["tiles"][0]["offset"], "nbytes": len(small), "count": 6}]}, payload[: header["tiles"][0]["offset"]] + small, "tile 0 is a 32x160 image, the header says 32x192"),
        "not an object": ([1, 2], payload, "not a JSON object"),
    }
    for what, (head, body, message) in cases.items():
        path = tmp_path / "lying.dsqp"
        path.write_bytes(_join(head, body, rehash=True))
        with pytest.raises(ValueError) as exc:
            PatchStore.load(path)
        text = str(exc.value)
        assert text.startswith(f"{path}: ") and "\n" not in text, (what, text)
        assert message in text, (what, text)
    with pytest.raises(ValueError, match="above the cap of 1,000"):
        PatchStore.from_bytes(store.to_bytes(), max_bytes=1000)
    monkeypatch.setattr(store_module, "MAX_TILE_PIXELS", 2 * 32 * 32)
    with pytest.raises(ValueError, match="tile 0 of 6 images is above the cap"):
        PatchStore.from_bytes(store.to_bytes())


# ---------------------------------------------------------------------------- source files


def _write_tree_tar(path, rng, mode="w"):
    """A tar of train/<class>/<i>.png (every file of its own size) and a test split; returns
    {member name: size}."""
    sizes = {}
    with tarfile.open(path, mode) as tar:
        for split, per in (("train", 3), ("test", 1)):
            for cls in ("b", "a"):
                for i in range(per):
                    buf = io.BytesIO()
                    img = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) if i % 2 else np.full((8, 8, 3), 40 * i, np.uint8)
                    pad = PngInfo()  # a text chunk of a different length in every file: every size differs
                    pad.add_text("pad", "x" * (7 * len(sizes)))
                    Image.fromarray(img).save(buf, "PNG", pnginfo=pad)
                    name = f"{split}/{cls}/{i}.png"
                    info = tarfile.TarInfo(name)
                    info.size = buf.tell()
                    tar.addfile(info, io.BytesIO(buf.getvalue()))
                    sizes[name] = buf.tell()
    return sizes


def test_source_file_bytes_of_a_tar_and_a_folder(tmp_path, rng):
    sizes = _write_tree_tar(tmp_path / "data.tar", rng)
    ds = read_image_tar(tmp_path / "data.tar")
    # the reader's order: class a then b, by path within a class
    order = ["train/a/0.png", "train/a/1.png", "train/a/2.png", "train/b/0.png", "train/b/1.png", "train/b/2.png"]
    chosen = np.array([4, 0, 2])
    total, what = source_file_bytes(ds, chosen)
    assert total == sum(sizes[order[i]] for i in chosen) and what == "3 members of data.tar (.png)"
    assert len(set(sizes.values())) == len(sizes)  # every size differs: a wrong order would be seen
    with tarfile.open(tmp_path / "data.tar") as tar:
        tar.extractall(tmp_path / "tree", filter="data")
    folder = read_image_folder(tmp_path / "tree")
    assert np.array_equal(folder.images, ds.images)
    assert source_file_bytes(folder, chosen) == (total, "3 files under tree/ (.png)")
    test_split = read_image_tar(tmp_path / "data.tar", split="test")
    assert source_file_bytes(test_split, np.array([1]))[0] == sizes["test/b/0.png"]
    _write_tree_tar(tmp_path / "data.tar.gz", rng, "w:gz")
    none, why = source_file_bytes(read_image_tar(tmp_path / "data.tar.gz"), chosen)
    assert none is None and "compressed tar" in why


def test_source_file_bytes_without_files_per_sample(tmp_path):
    images = np.zeros((3, 4, 4), np.uint8)
    (tmp_path / "x-images-idx3-ubyte").write_bytes(bytes([0, 0, 8, 3]) + struct.pack(">III", 3, 4, 4) + images.tobytes())
    (tmp_path / "x-labels-idx1-ubyte").write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">I", 3) + bytes([0, 1, 0]))
    ds = read_idx(tmp_path / "x-images-idx3-ubyte")
    assert source_file_bytes(ds, np.array([0])) == (None, "no file per sample in the source (idx)")
