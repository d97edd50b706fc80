import re

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


# ------------------------------------------------ foreign folders, verification, tmp dirs
import json
import os
import signal
import subprocess
import sys
import textwrap

from sidkit.errors import ArtifactError
from sidkit.stages import check_replaceable, clean_stale_tmp, is_stage_meta


@pytest.mark.parametrize("meta", [None, "{}", "not json", '{"artifact": "a"}',
                                  '{"artifact": "b", "schema_version": 1, "key": "x"}'])
def test_folder_without_sidkit_meta_is_never_replaced(tmp_path, meta):
    d = tmp_path / "a"
    d.mkdir()
    (d / "mine.csv").write_text("user data")
    if meta is not None:
        (d / "meta.json").write_text(meta)
    with pytest.raises(ArtifactError, match=r"a exists but was not written by sidkit"):
        run_stage(Stage("a", _writer([], "A")), tmp_path)
    assert (d / "mine.csv").read_text() == "user data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]  # no temp dir either


def test_file_at_stage_path_is_an_error(tmp_path):
    (tmp_path / "a").write_text("x")
    with pytest.raises(ArtifactError, match="in the way of the 'a' stage"):
        run_stage(Stage("a", _writer([], "A")), tmp_path)
    assert (tmp_path / "a").read_text() == "x"


def test_extra_file_in_a_sidkit_stage_folder_is_not_deleted(tmp_path):
    run_stage(Stage("a", _writer([], "A")), tmp_path)
    (tmp_path / "a" / "notes.txt").write_text("keep me")
    with pytest.raises(ArtifactError, match=r"file\(s\) sidkit did not write: \['notes.txt'\]"):
        run_stage(Stage("a", _writer([], "A2"), params={"p": 2}), tmp_path)
    assert (tmp_path / "a" / "notes.txt").read_text() == "keep me"
    assert (tmp_path / "a" / "v.txt").read_text() == "A"


def test_meta_records_every_output_file(tmp_path):
    run_stage(Stage("a", _writer([], "A")), tmp_path)
    meta = read_meta(tmp_path / "a")
    assert meta["outputs"] == {"v.txt": {"size": 1, "sha256": __import__("hashlib").sha256(b"A").hexdigest()}}
    assert is_stage_meta(meta, "a") and not is_stage_meta(meta, "b")
    check_replaceable(tmp_path / "a", "a")  # no error


@pytest.mark.parametrize("tamper, reason", [
    (lambda d: (d / "v.txt").write_text("AB"), r"output v.txt changed since it was written \(size 2 bytes, recorded 1\)"),
    (lambda d: (d / "v.txt").write_text("Z"), "content hash differs, same size"),
    (lambda d: (d / "v.txt").unlink(), "output v.txt is missing"),
])
def test_changed_outputs_are_not_cached(tmp_path, tamper, reason):
    calls = []
    a = Stage("a", _writer(calls, "A"))
    run_stage(a, tmp_path)
    tamper(tmp_path / "a")
    r = run_stage(a, tmp_path)
    assert r.status == "ran" and re.search(reason, r.reason)
    assert calls == ["A", "A"] and (tmp_path / "a" / "v.txt").read_text() == "A"
    again = run_stage(a, tmp_path)
    assert again.status == "cached" and again.reason is None


def _as_old_meta(stage_dir):
    """Drop the per-file records, as sidkit wrote meta.json before they existed."""
    meta = json.loads((stage_dir / "meta.json").read_text())
    del meta["outputs"]
    (stage_dir / "meta.json").write_text(json.dumps(meta))


def test_old_meta_without_file_records_is_verified_by_its_combined_hash(tmp_path):
    a = Stage("a", _writer([], "A"))
    run_stage(a, tmp_path)
    _as_old_meta(tmp_path / "a")
    assert run_stage(a, tmp_path).status == "cached"
    (tmp_path / "a" / "v.txt").write_text("Z")
    r = run_stage(a, tmp_path)
    assert r.status == "ran" and "content hash" in r.reason


def test_stale_temp_dirs_are_removed_and_others_kept(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer runs
    stale = [tmp_path / f".a.{dead.pid}-abcd_123.tmp", tmp_path / ".a.k2j4h5g6.tmp",
             tmp_path / f".a.{dead.pid}-zzzzzzzz.old"]
    live = tmp_path / f".a.{os.getpid()}-abcdefgh.tmp"  # a run in progress
    others = [tmp_path / ".a.mine.tmp", tmp_path / ".other.abcdefgh.tmp", tmp_path / "a.abcdefgh.tmp"]
    for p in stale + [live] + others:
        p.mkdir()
        (p / "f").write_text("x")
    removed = clean_stale_tmp(tmp_path, ["a"])
    assert sorted(removed) == sorted(stale)
    assert all(p.exists() for p in [live] + others)


SIGTERM_SCRIPT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from sidkit.stages import Stage, run_stage, sigterm_as_exit

    root = Path(sys.argv[1])

    def slow(out, inputs):
        (out / "partial.bin").write_bytes(b"x" * 100)
        print("started", flush=True)
        time.sleep(60)

    with sigterm_as_exit():
        run_stage(Stage("slow", slow), root)
""")


def test_sigterm_removes_the_running_stages_temp_dir(tmp_path):
    root = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "-c", SIGTERM_SCRIPT, str(root)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "started"
        assert len(list(root.glob(".slow.*.tmp"))) == 1
        p.send_signal(signal.SIGTERM)
        rc = p.wait(timeout=30)
    finally:
        p.kill()
    assert rc == 128 + signal.SIGTERM, p.stderr.read()
    assert list(root.iterdir()) == []


def test_old_meta_folder_with_a_user_file_is_not_replaced(tmp_path):
    a = Stage("a", _writer([], "A"))
    run_stage(a, tmp_path)
    _as_old_meta(tmp_path / "a")
    (tmp_path / "a" / "mine.txt").write_text("keep me")
    with pytest.raises(ArtifactError, match=r"holds file\(s\) the 'a' stage does not write: \['mine.txt'\]"):
        run_stage(a, tmp_path)  # the combined hash changed -> rerun -> but not over mine.txt
    assert (tmp_path / "a" / "mine.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]
