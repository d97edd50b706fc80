import numpy as np
import pytest

from sidkit.embed import TextEmbedder, resolve_model_dir
from sidkit.errors import DataError


def test_default_model_embeds_offline_and_caches(sidkit_home):
    e = TextEmbedder(show_progress=False)
    texts = ["Title: Toy Story. Genres: Animation", "Title: Heat. Genres: Crime Thriller",
             "Title: Toy Story 2. Genres: Animation"]
    a = e.embed(texts)
    assert a.shape == (3, 384) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    # semantically closer texts are closer
    assert a[0] @ a[2] > a[0] @ a[1]
    assert e.cache_path(texts).exists()
    b = TextEmbedder(show_progress=False).embed(texts)  # fresh object: served from cache
    np.testing.assert_array_equal(a, b)
    # a changed text is a cache miss
    assert e.cache_path(texts[:2] + ["x"]) != e.cache_path(texts)


def test_bad_model_and_inputs(tmp_path):
    with pytest.raises(DataError, match="not a local directory"):
        resolve_model_dir(str(tmp_path / "no-model"))
    with pytest.raises(DataError, match="no texts"):
        TextEmbedder(cache=False).embed([])
