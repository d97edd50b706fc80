import pytest

from sidkit.stages import Stage, read_meta, run_stage


def _writer(calls, text):
    def fn(out, inputs):
        calls.append(text)
        upstream = "".join((d / "v.txt").read_text() for d in inputs.values())
        (out / "v.txt").write_text(upstream + text)
        return {"len": len(upstream + text)}
    return fn


def test_cache_hit_miss_and_downstream_invalidation(tmp_path):
    calls = []
    a = Stage("a", _writer(calls, "A"), params={"p": 1})
    b = Stage("b", _writer(calls, "B"), inputs=("a",))
    assert run_stage(a, tmp_path).status == "ran"
    assert run_stage(b, tmp_path).status == "ran"
    assert run_stage(a, tmp_path).status == "cached"
    assert run_stage(b, tmp_path).status == "cached"
    assert calls == ["A", "B"]
    # changed parameter -> a reruns with new output -> b's input hash changes -> b reruns
    a2 = Stage("a", _writer(calls, "A2"), params={"p": 2})
    assert run_stage(a2, tmp_path).status == "ran"
    r = run_stage(b, tmp_path)
    assert r.status == "ran" and (tmp_path / "b" / "v.txt").read_text() == "A2B"
    assert run_stage(b, tmp_path, force=True).status == "ran"
    assert read_meta(tmp_path / "b")["summary"] == {"len": 3}


def test_crash_leaves_previous_artifact_and_no_temp_dirs(tmp_path):
    ok = Stage("a", _writer([], "A"))
    run_stage(ok, tmp_path)

    def boom(out, inputs):
        (out / "v.txt").write_text("partial")
        raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError):
        run_stage(Stage("a", boom, params={"p": 9}), tmp_path)
    assert (tmp_path / "a" / "v.txt").read_text() == "A"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]
    with pytest.raises(RuntimeError):
        run_stage(Stage("new", boom), tmp_path)
    assert not (tmp_path / "new").exists()


def test_missing_upstream_stage(tmp_path):
    with pytest.raises(RuntimeError, match="needs stage 'a'"):
        run_stage(Stage("b", _writer([], "B"), inputs=("a",)), tmp_path)
