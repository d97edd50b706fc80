import numpy as np
import pytest

from sidkit.io import atomic_path, hash_array, hash_obj, load_npy, save_npy, write_json, read_json


def test_atomic_write_leaves_old_file_on_crash(tmp_path):
    target = tmp_path / "a.json"
    write_json(target, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half-written")
            raise RuntimeError("simulated crash")
    assert read_json(target) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_atomic_write_new_file_absent_after_crash(tmp_path):
    target = tmp_path / "sub" / "x.npy"
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"\0" * 10)
            raise KeyboardInterrupt
    assert not target.exists()
    assert list((tmp_path / "sub").iterdir()) == []


def test_npy_round_trip_and_hashes(tmp_path):
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    save_npy(tmp_path / "a.npy", a)
    b = load_npy(tmp_path / "a.npy")
    np.testing.assert_array_equal(a, b)
    assert hash_array(a) == hash_array(b)
    assert hash_array(a) != hash_array(a.astype(np.float64))
    assert hash_array(a) != hash_array(a.reshape(4, 3))
    assert hash_obj({"a": 1, "b": 2}) == hash_obj({"b": 2, "a": 1})


def test_atomic_files_get_normal_permissions(tmp_path):
    import os
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "r.json", {})
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "r.json").st_mode & 0o777 == 0o644
