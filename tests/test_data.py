import gzip
import io
import pickle
import tarfile

import numpy as np
import pytest
from PIL import Image

from dsquant.data import (
    DataError,
    detect_format,
    from_arrays,
    load_dataset,
    load_digits,
    read_cifar_archive,
    read_features,
    read_idx,
    read_image_folder,
    read_image_tar,
)

from conftest import shared


def _image(seed, size=(6, 5), mode="RGB"):
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    return rng.integers(0, 256, shape, dtype=np.uint8)


def _write_folder(root, classes=("cat", "ant", "bee"), per_class=3, split=None):
    arrays = {}
    for c in classes:
        d = root / split / c if split else root / c
        d.mkdir(parents=True)
        for i in range(per_class):
            a = _image(hash((c, i)) % 1000)
            Image.fromarray(a).save(d / f"{i:02d}.png")
            arrays[(c, i)] = a
    return arrays


def test_image_folder_orders_classes_and_files_like_imagefolder(tmp_path):
    arrays = _write_folder(tmp_path)
    ds = read_image_folder(tmp_path)
    assert ds.classes == ["ant", "bee", "cat"]
    assert ds.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert ds.images.shape == (9, 5, 6, 3) and ds.images.dtype == np.uint8
    assert np.array_equal(ds.images[3], arrays[("bee", 0)])  # PNG is lossless
    assert detect_format(tmp_path) == "imagefolder"


def test_tar_of_imagefolder_with_splits_and_unsafe_members(tmp_path):
    src = tmp_path / "src"
    train = _write_folder(src, split="train")
    _write_folder(src, classes=("ant", "bee"), per_class=1, split="test")
    tar_path = tmp_path / "data.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tar:
        tar.add(src / "train", arcname="train")
        tar.add(src / "test", arcname="test")
        evil = tarfile.TarInfo("../../evil/cat/x.png")  # climbs out: must be ignored
        data = (src / "train" / "cat" / "00.png").read_bytes()
        evil.size = len(data)
        tar.addfile(evil, io.BytesIO(data))
        link = tarfile.TarInfo("train/cat/link.png")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        tar.addfile(link)
    ds = read_image_tar(tar_path)
    assert len(ds) == 9 and ds.split == "train"
    assert np.array_equal(ds.images[8], train[("cat", 2)])
    test = read_image_tar(tar_path, split="test")
    assert len(test) == 2 and test.classes == ["ant", "bee"]
    assert not (tmp_path.parent / "evil").exists()
    with pytest.raises(DataError, match="no 'val' split"):
        read_image_tar(tar_path, split="val")


def test_corrupt_image_and_archive_name_the_file(tmp_path):
    _write_folder(tmp_path / "f")
    (tmp_path / "f" / "ant" / "bad.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=r"bad\.jpg: cannot decode image"):
        read_image_folder(tmp_path / "f")
    broken = tmp_path / "broken.tar"
    broken.write_bytes(b"\x00" * 100 + b"garbage")
    with pytest.raises(DataError, match="broken.tar"):
        load_dataset(broken)


def test_mixed_sizes_need_image_size(tmp_path):
    d = tmp_path / "a"
    d.mkdir()
    Image.fromarray(_image(1, (6, 5))).save(d / "1.png")
    Image.fromarray(_image(2, (9, 7))).save(d / "2.png")
    with pytest.raises(DataError, match="image_size"):
        read_image_folder(tmp_path)
    ds = read_image_folder(tmp_path, image_size=4)
    assert ds.images.shape == (2, 4, 4, 3)


def _idx_bytes(arr, code=0x08):
    header = bytes([0, 0, code, arr.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in arr.shape)
    return header + arr.tobytes()


@pytest.mark.parametrize("gz", [False, True])
def test_idx_pair_plain_and_gzipped(tmp_path, gz):
    imgs = np.arange(3 * 4 * 4, dtype=np.uint8).reshape(3, 4, 4)
    labels = np.array([2, 0, 1], dtype=np.uint8)
    suffix = ".gz" if gz else ""
    write = (lambda p, b: p.write_bytes(gzip.compress(b))) if gz else (lambda p, b: p.write_bytes(b))
    write(tmp_path / f"train-images-idx3-ubyte{suffix}", _idx_bytes(imgs))
    write(tmp_path / f"train-labels-idx1-ubyte{suffix}", _idx_bytes(labels))
    ds = read_idx(tmp_path / f"train-images-idx3-ubyte{suffix}")
    assert ds.images.shape == (3, 4, 4, 1) and np.array_equal(ds.images[..., 0], imgs)
    assert ds.labels.tolist() == [2, 0, 1]
    assert detect_format(tmp_path) == "idx" and len(load_dataset(tmp_path)) == 3


def test_idx_truncated_and_mismatched(tmp_path):
    imgs = np.zeros((3, 4, 4), dtype=np.uint8)
    (tmp_path / "x-images-idx3-ubyte").write_bytes(_idx_bytes(imgs)[:-5])
    (tmp_path / "x-labels-idx1-ubyte").write_bytes(_idx_bytes(np.zeros(3, np.uint8)))
    with pytest.raises(DataError, match="x-images-idx3-ubyte: IDX header announces"):
        read_idx(tmp_path / "x-images-idx3-ubyte")
    (tmp_path / "x-images-idx3-ubyte").write_bytes(_idx_bytes(imgs))
    (tmp_path / "x-labels-idx1-ubyte").write_bytes(_idx_bytes(np.zeros(2, np.uint8)))
    with pytest.raises(DataError, match="do not match 3 images"):
        read_idx(tmp_path / "x-images-idx3-ubyte")


def test_real_fashion_mnist():
    ds = load_dataset(shared("fashion-mnist"))
    assert ds.images.shape == (60000, 28, 28, 1)
    assert np.bincount(ds.labels).tolist() == [6000] * 10
    test = load_dataset(shared("fashion-mnist"), split="test")
    assert len(test) == 10000 and test.split == "test"


def _cifar_archive(path, n_per_batch=4, hundred=False, evil=False):
    rng = np.random.default_rng(0)
    batches = {}
    with tarfile.open(path, "w:gz") as tar:
        def add(name, obj):
            data = pickle.dumps(obj, protocol=2)
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        if hundred:
            for split in ("train", "test"):
                data = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
                batches[split] = data
                add(f"cifar-100-python/{split}", {"data": data, "fine_labels": list(range(n_per_batch)), "coarse_labels": [0] * n_per_batch})
            add("cifar-100-python/meta", {"fine_label_names": [f"c{i}" for i in range(100)]})
        else:
            for name in ["data_batch_1", "data_batch_2", "test_batch"]:
                data = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
                batches[name] = data
                obj = {"data": data, "labels": [i % 10 for i in range(n_per_batch)], "batch_label": name}
                if evil and name == "data_batch_2":
                    obj = {"data": data, "labels": [0] * n_per_batch, "x": _Evil()}
                add(f"cifar-10-batches-py/{name}", obj)
            add("cifar-10-batches-py/batches.meta", {"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]})
    return batches


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned > /tmp/dsquant-pwned",))


def test_cifar10_python_archive(tmp_path):
    path = tmp_path / "cifar-10-python.tar.gz"
    batches = _cifar_archive(path)
    assert detect_format(path) == "cifar"
    ds = read_cifar_archive(path)
    assert ds.images.shape == (8, 32, 32, 3) and ds.classes[0] == "airplane"
    # rows are channel planes: R (1024), G, B; pixel (0, 1) of image 0
    row = batches["data_batch_1"][0]
    assert ds.images[0, 0, 1].tolist() == [row[1], row[1024 + 1], row[2048 + 1]]
    assert np.array_equal(ds.images[4:], read_cifar_archive(path).images[4:])
    test = read_cifar_archive(path, split="test")
    assert len(test) == 4 and test.split == "test"


def test_cifar100_python_archive(tmp_path):
    path = tmp_path / "cifar-100-python.tar.gz"
    _cifar_archive(path, hundred=True)
    ds = load_dataset(path)
    assert len(ds) == 4 and ds.labels.tolist() == [0, 1, 2, 3] and ds.classes[3] == "c3"


def test_cifar_pickle_with_code_is_refused(tmp_path):
    path = tmp_path / "cifar-10-python.tar.gz"
    _cifar_archive(path, evil=True)
    with pytest.raises(DataError, match="posix.system|os.system|not allowed"):
        read_cifar_archive(path)
    import os

    assert not os.path.exists("/tmp/dsquant-pwned")


def test_digits_and_arrays():
    d = load_digits()
    assert d.images.shape == (1437, 8, 8, 1) and d.images.max() == 255
    assert len(load_digits("test")) == 360 and load_digits("test").split == "test"
    a = from_arrays(np.zeros((4, 3, 3), np.uint8), [0, 1, 1, 0])
    assert a.images.shape == (4, 3, 3, 1) and a.classes == ["0", "1"]
    with pytest.raises(DataError, match="one entry per image"):
        from_arrays(np.zeros((4, 3, 3), np.uint8), [0, 1])
    with pytest.raises(DataError, match="empty"):
        from_arrays(np.zeros((0, 3, 3), np.uint8), np.zeros(0, int), classes=["a"])


def test_features_npz_and_npy(tmp_path):
    f = np.arange(12, dtype=np.float32).reshape(4, 3)
    np.savez(tmp_path / "f.npz", features=f, labels=np.array([0, 1, 0, 1]))
    ds = read_features(tmp_path / "f.npz")
    assert ds.labels.tolist() == [0, 1, 0, 1] and ds.classes == ["0", "1"]
    np.save(tmp_path / "f.npy", f)
    np.save(tmp_path / "l.npy", np.array([0, 1, 1]))
    with pytest.raises(DataError, match="3,\\) labels do not match 4"):
        read_features(tmp_path / "f.npy", labels=tmp_path / "l.npy")
    np.save(tmp_path / "o.npy", np.array([{"a": 1}], dtype=object))
    with pytest.raises(DataError, match="o.npy: cannot read"):
        read_features(tmp_path / "o.npy")


def test_missing_path_and_unknown_format(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_dataset(tmp_path / "nope")
    (tmp_path / "x.csv").write_text("1,2")
    with pytest.raises(DataError, match="unrecognised"):
        load_dataset(tmp_path / "x.csv")
