"""Loaders: every file format through synthetic files written here, scaling, validation and the torch view."""
import gzip
import struct

import numpy as np
import pytest
import torch

from dhvc_ext.data import (FASHION_MNIST_DIR, DataShapeError, Dataset, DatasetNotFoundError, NonFiniteDataError,
                           check_features, load_dataset)


def write_idx(path, array, gz=False):
    """Write an idx file by the format's definition: 00 00, dtype code, rank, big-endian dims, data."""
    codes = {"u1": 0x08, "i2": 0x0B, "f4": 0x0D}
    array = np.asarray(array)
    code = codes[f"{array.dtype.kind}{array.dtype.itemsize}"]
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with (gzip.open if gz else open)(path, "wb") as f:
        f.write(header + array.astype(array.dtype.newbyteorder(">")).tobytes())


def fake_fashion(directory, gz, n_train=6, n_test=4, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n_train + n_test, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n_train + n_test).astype(np.uint8)
    suffix = ".gz" if gz else ""
    for split, rows in (("train", slice(0, n_train)), ("t10k", slice(n_train, None))):
        write_idx(directory / f"{split}-images-idx3-ubyte{suffix}", images[rows], gz)
        write_idx(directory / f"{split}-labels-idx1-ubyte{suffix}", labels[rows], gz)
    return images, labels


def test_digits():
    data = load_dataset("digits")
    assert (len(data), data.n_features, data.image_shape) == (1797, 64, (1, 8, 8))
    assert data.y.dtype == np.int64 and set(np.unique(data.y)) == set(range(10))
    f = data.features()
    assert f.dtype == np.float32 and f.shape == (1797, 64)
    assert f.min() == 0.0 and f.max() == 1.0 and data.unit_interval
    np.testing.assert_allclose(f, data.X / 16.0, rtol=1e-6)  # the known range 0..16, not the data's max


@pytest.mark.parametrize("gz", [False, True])
def test_idx_file_round_trip(tmp_path, gz):
    images, labels = fake_fashion(tmp_path, gz)
    suffix = ".gz" if gz else ""
    data = load_dataset(str(tmp_path / f"train-images-idx3-ubyte{suffix}"))
    assert data.X.dtype == np.uint8 and data.image_shape == (1, 28, 28)
    np.testing.assert_array_equal(data.X, images[:6].reshape(6, 784))
    np.testing.assert_array_equal(data.y, labels[:6])  # picked up from the sibling labels file
    np.testing.assert_allclose(data.features(), images[:6].reshape(6, 784) / np.float32(255), rtol=1e-6)
    assert isinstance(data.X, np.memmap) != gz  # only uncompressed files are mapped


def test_idx_other_dtypes_and_bad_magic(tmp_path):
    values = np.arange(12, dtype=">f4").reshape(4, 3) - 5
    write_idx(tmp_path / "table.idx", values)
    data = load_dataset(tmp_path / "table.idx", scaling=None)
    np.testing.assert_array_equal(data.features(), values)
    assert data.y is None and data.image_shape is None and not data.unit_interval
    write_idx(tmp_path / "short.idx", np.arange(6, dtype=">i2").reshape(2, 3))
    np.testing.assert_array_equal(load_dataset(tmp_path / "short.idx", scaling=None).X, [[0, 1, 2], [3, 4, 5]])
    (tmp_path / "bad.idx").write_bytes(b"\x01\x02\x08\x02" + bytes(8))
    with pytest.raises(ValueError, match="not an idx file"):
        load_dataset(tmp_path / "bad.idx")
    (tmp_path / "truncated.idx").write_bytes((tmp_path / "short.idx").read_bytes()[:-2])
    with pytest.raises(ValueError, match="header promises"):
        load_dataset(tmp_path / "truncated.idx")


@pytest.mark.parametrize("gz", [False, True])
def test_fashion_loader_on_fake_directory(tmp_path, gz):
    images, labels = fake_fashion(tmp_path, gz)
    data = load_dataset("fashion-mnist", data_dir=tmp_path)
    assert data.name == "fashion-mnist" and data.image_shape == (1, 28, 28) and data.unit_interval
    np.testing.assert_array_equal(data.X, images.reshape(10, 784))  # train rows first, then t10k
    np.testing.assert_array_equal(data.y, labels)
    assert data.features().max() <= 1.0


def test_fashion_missing_says_how_to_get_it(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((1, 28, 28), np.uint8))
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("fashion-mnist", data_dir=tmp_path)
    message = str(err.value)
    assert "apt-get install dataset-fashion-mnist" in message
    assert "https://github.com/zalandoresearch/fashion-mnist" in message
    assert "lacks train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte " in message
    assert isinstance(err.value, FileNotFoundError)


@pytest.mark.skipif(not FASHION_MNIST_DIR.exists(), reason="dataset-fashion-mnist is not installed")
def test_real_fashion_mnist():
    data = load_dataset("fashion-mnist")
    assert data.X.shape == (70000, 784) and data.X.dtype == np.uint8
    assert np.bincount(data.y).tolist() == [7000] * 10


def test_npz(tmp_path):
    X, y = np.arange(20.0).reshape(5, 4), np.array([3, 1, 3, 1, 2])
    np.savez(tmp_path / "a.npz", X=X, y=y)
    data = load_dataset(tmp_path / "a.npz")
    np.testing.assert_array_equal(data.X, X)
    np.testing.assert_array_equal(data.y, y)
    np.testing.assert_allclose(data.features(), X / 19.0, rtol=1e-6)  # global min 0, max 19
    np.savez(tmp_path / "b.npz", data=X)
    with pytest.raises(ValueError, match=r"no array 'X'.*\['data'\]"):
        load_dataset(tmp_path / "b.npz")
    np.savez(tmp_path / "c.npz", X=X, y=y[:3])
    with pytest.raises(ValueError, match=r"labels have shape \(3,\); expected \(5,\)"):
        load_dataset(tmp_path / "c.npz")


def test_npy_is_memory_mapped_and_indexed_lazily(tmp_path):
    X = np.random.default_rng(1).normal(size=(50, 3, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", X)
    data = load_dataset(str(tmp_path / "x.npy"))
    assert isinstance(data.X, np.memmap) and data.image_shape == (1, 3, 4) and data.n_features == 12
    in_memory = (X.reshape(50, 12) - X.min()) / (X.max() - X.min())
    index = np.array([7, 0, 49, 7])
    np.testing.assert_allclose(data.features(index), in_memory[index], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(data.features(slice(10, 20)), in_memory[10:20], rtol=1e-5, atol=1e-6)
    assert data.features(3).shape == (1, 12)


@pytest.mark.parametrize("header", [False, True])
def test_csv(tmp_path, header):
    rows = [[1.5, 2, "cat"], [0, -1, "dog"], [3, 4, "cat"]]
    lines = (["a,label,b"] if header else []) + [f"{r[0]},{i},{r[1]}" for i, r in enumerate(rows)]
    (tmp_path / "t.csv").write_text("\n".join(lines) + "\n")
    data = load_dataset(tmp_path / "t.csv", scaling=None)
    if header:  # the label column is taken out of the features
        np.testing.assert_array_equal(data.X, [[1.5, 2], [0, -1], [3, 4]])
        np.testing.assert_array_equal(data.y, [0, 1, 2])
    else:
        np.testing.assert_array_equal(data.X, [[1.5, 0, 2], [0, 1, -1], [3, 2, 4]])
        assert data.y is None
    (tmp_path / "s.csv").write_text("x1,y\n0.5,cat\n0.25,dog\n1,cat\n")
    data = load_dataset(tmp_path / "s.csv", scaling=None)
    np.testing.assert_array_equal(data.y, [0, 1, 0])  # string labels coded in sorted order
    assert data.unit_interval  # raw values found within [0, 1]


def test_standard_scaling_from_file(tmp_path):
    rng = np.random.default_rng(2)
    X = rng.normal(100.0, 3.0, size=(1000, 5))
    X[:, 4] = 7.0  # a constant column is centred, not divided by 0
    np.save(tmp_path / "x.npy", X)
    data = load_dataset(tmp_path / "x.npy", scaling="standard")
    f = data.features()
    np.testing.assert_allclose(f[:, :4].mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(f[:, :4].std(axis=0), 1, rtol=1e-4)
    np.testing.assert_array_equal(f[:, 4], 0)
    assert not data.unit_interval


def test_chunked_statistics_match_numpy(tmp_path, monkeypatch):
    import dhvc_ext.data as data_module

    monkeypatch.setattr(data_module, "_CHUNK_ROWS", 7)  # many uneven chunks over 100 rows
    X = np.random.default_rng(3).normal(5.0, 2.0, size=(100, 3))
    np.save(tmp_path / "x.npy", X)
    data = load_dataset(tmp_path / "x.npy", scaling="standard")
    np.testing.assert_allclose(data.offset, X.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(data.scale, X.std(axis=0), rtol=1e-6)
    bad = X.copy()
    bad[[15, 40, 41]] = [np.nan, np.inf, -np.inf]
    np.save(tmp_path / "bad.npy", bad)
    with pytest.raises(ValueError, match=r"3 of 100 rows contain NaN or inf \(first bad row: 15\)"):
        load_dataset(tmp_path / "bad.npy")


@pytest.mark.parametrize(
    "X, match, kind",
    [
        (np.array([[0.0, np.nan], [1.0, 2.0], [np.inf, 0.0]]), r"2 of 3 rows contain NaN or inf \(first bad row: 0\)",
         NonFiniteDataError),
        (np.array([[1e300]]), "NaN or inf", NonFiniteDataError),  # finite in float64, inf once cast to float32
        (np.zeros((0, 3)), r"shape \(0, 3\)", DataShapeError),
        (np.zeros((4, 0)), r"shape \(4, 0\)", DataShapeError),
        (np.zeros(5), r"shape \(5,\)", DataShapeError),
        (np.zeros((2, 2, 2, 2, 2)), r"shape \(2, 2, 2, 2, 2\)", DataShapeError),
        (np.array([["a", "b"]]), "expected numbers", ValueError),
    ],
)
def test_check_features_rejects(X, match, kind):
    # the subclasses let callers (the CLI's exit codes) tell the failures apart without reading messages
    with pytest.raises(kind, match=match):
        check_features(X, who="fit(X)")
    with pytest.raises(ValueError, match=r"fit\(X\)"):
        check_features(X, who="fit(X)")


def test_check_features_accepts_tensors_and_images():
    t = torch.arange(24, dtype=torch.float64).reshape(2, 3, 4)
    out = check_features(t)
    assert out.dtype == np.float32 and out.shape == (2, 12)
    np.testing.assert_array_equal(out, np.arange(24).reshape(2, 12))
    assert check_features(torch.ones(2, 2, dtype=torch.bfloat16)).dtype == np.float32


def test_bad_sources(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.npy"):
        load_dataset(tmp_path / "nowhere.npy")
    (tmp_path / "x.txt").write_text("1,2\n")
    with pytest.raises(ValueError, match=r"supported formats: \.npz, \.npy, \.csv, idx"):
        load_dataset(tmp_path / "x.txt")
    with pytest.raises(ValueError, match="scaling='zscore'"):
        load_dataset("digits", scaling="zscore")
    np.save(tmp_path / "flat.npy", np.arange(4.0))
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        load_dataset(tmp_path / "flat.npy")


def test_torch_dataset_batches():
    data = load_dataset("digits")
    ds = data.torch_dataset()
    assert len(ds) == 1797
    row = ds[5]
    assert row.dtype == torch.float32 and row.shape == (64,)
    torch.testing.assert_close(row, torch.from_numpy(data.features([5])[0]))
    batch = ds.__getitems__([3, 1, 4, 1])
    assert isinstance(batch, torch.Tensor) and batch.shape == (4, 64)
    torch.testing.assert_close(batch, torch.stack([ds[i] for i in [3, 1, 4, 1]]))
    # the DataLoader hands the whole batch to __getitems__, and the identity collate keeps the one tensor
    loader = torch.utils.data.DataLoader(ds, batch_size=100, shuffle=False, collate_fn=lambda b: b)
    first = next(iter(loader))
    torch.testing.assert_close(first, torch.from_numpy(data.features(slice(0, 100))))


def test_subset_is_reproducible():
    data = load_dataset("digits")
    a, b, c = data.subset(200, seed=4), data.subset(200, seed=4), data.subset(200, seed=5)
    np.testing.assert_array_equal(a.X, b.X)
    np.testing.assert_array_equal(a.y, b.y)
    assert not np.array_equal(a.X, c.X)
    assert a.unit_interval and a.image_shape == (1, 8, 8)
    np.testing.assert_array_equal(a.features(), a.X / np.float32(16))
    with pytest.raises(ValueError, match="subset n=0"):
        data.subset(0)
    rows = Dataset(np.arange(50)[:, None], None, "rows").subset(50, seed=1)
    np.testing.assert_array_equal(rows.X[:, 0], np.arange(50))  # without replacement: every row once


@pytest.mark.parametrize("scaling", ["minmax", "standard", None])
def test_finite_float64_beyond_float32_is_non_finite_data(tmp_path, scaling):
    # The features are float32: 1e300 would be inf (scaled by a range that overflows, NaN) in training.
    X = np.random.default_rng(0).random((30, 4))
    X[17, 2] = 1e300
    np.save(tmp_path / "huge.npy", X)
    with pytest.raises(NonFiniteDataError, match=r"1 of 30 rows contain NaN or inf \(first bad row: 17\).*float32"):
        load_dataset(tmp_path / "huge.npy", scaling=scaling)
    X[17, 2], X[3, 0] = 3e38, -3e38  # each fits float32, their range does not
    np.save(tmp_path / "wide.npy", X)
    with pytest.raises(NonFiniteDataError, match="overflows float32"):
        load_dataset(tmp_path / "wide.npy", scaling="minmax")


def test_sparse_and_none_are_type_errors_that_say_what_to_do():
    import scipy.sparse

    from dhvc_ext import DHVC

    X = scipy.sparse.random(20, 5, density=0.3, format="csr", random_state=0)
    for value in (X, X.tocoo(), scipy.sparse.csr_array(X), torch.eye(3).to_sparse()):
        with pytest.raises(TypeError, match=r"sparse input .* is not supported: use X.toarray\(\)"):
            check_features(value, who="DHVC")
    with pytest.raises(TypeError, match="X is None"):
        check_features(None)
    model = DHVC(n_clusters=2, hidden=(4,), latent_dim=2, pretrain_epochs=1, epochs=0, cluster_init="mixture")
    with pytest.raises(TypeError, match="toarray"):  # before any training
        model.fit(X)
    with pytest.raises(TypeError, match="X is None"):
        model.fit(None)
