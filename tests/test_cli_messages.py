"""Error messages point the right way: the cause, and a fix the user can act on."""

import numpy as np
from typer.testing import CliRunner

from sidkit.cli import app

runner = CliRunner()


def _files(tmp_path, rows: str, n_items: int, model: str = ""):
    (tmp_path / "events.csv").write_text("user_id,item_id,timestamp\n" + rows)
    np.save(tmp_path / "emb.npy", np.random.default_rng(0).random((max(n_items, 1), 4)).astype(np.float32))
    cfg = tmp_path / "run.toml"
    cfg.write_text(f'[data]\ndataset = "{tmp_path / "events.csv"}"\nuser_core = 0\n'
                   f'[embed]\nembeddings_file = "{tmp_path / "emb.npy"}"\n[codes]\ncodebook_sizes = [2, 2]\n' + model)
    return cfg


def test_a_header_only_csv_says_it_holds_no_interactions(tmp_path):
    cfg = _files(tmp_path, "", 0)
    r = runner.invoke(app, ["run", str(cfg), "--out", str(tmp_path / "run")])
    assert r.exit_code == 1 and "holds no interactions" in r.output and "k-core" not in r.output


def test_too_few_items_for_the_protocol_names_the_cut_offs_not_a_k_key(tmp_path):
    cfg = _files(tmp_path, "".join(f"u1,i{t},{t}\n" for t in range(6)), 6, '[model]\ntype = "popularity"\n')
    r = runner.invoke(app, ["run", str(cfg), "--out", str(tmp_path / "run")])
    assert r.exit_code == 1 and "catalogue holds 6 items" in r.output and "top 20" in r.output
    assert "use k <=" not in r.output


def test_a_bad_model_config_fails_before_the_first_stage(tmp_path):
    cfg = _files(tmp_path, "".join(f"u{u},i{(u + t) % 30},{t}\n" for u in range(5) for t in range(6)), 30,
                 '[model]\ntype = "sasrec"\nhidden = 16\nn_heads = 3\n')
    for cmd in (["run", str(cfg)], ["train", str(cfg)]):
        out = tmp_path / ("run_" + cmd[0])
        r = runner.invoke(app, cmd + ["--out", str(out)])
        assert r.exit_code == 1 and "model 'sasrec': hidden=16 is not divisible by n_heads=3" in r.output
        assert not out.exists()                       # no stage ran
