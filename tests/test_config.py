import pytest

from sidkit.config import ExperimentConfig, load_config
from sidkit.errors import ConfigError


def test_defaults_and_toml(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('name = "x"\n[codes]\nmethod = "gaoq"\ncodebook_sizes = [8, 8]\n')
    cfg = load_config(p)
    assert cfg.name == "x" and cfg.codes.method == "gaoq" and cfg.codes.codebook_sizes == [8, 8]
    assert cfg.data == ExperimentConfig().data


@pytest.mark.parametrize("text, msg", [
    ('[codes]\nmethd = "x"\n', "unknown key 'codes.methd'"),
    ('colour = 1\n', "unknown key 'colour'"),
    ('[data]\nsplit = "random"\n', "data.split"),
    ('[codes]\ncodebook_sizes = [1]\n', "codebook size"),
    ('[data\n', "not valid TOML"),
])
def test_bad_configs_name_the_problem(tmp_path, text, msg):
    p = tmp_path / "c.toml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=msg):
        load_config(p)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")


def test_models_list_with_labels_and_per_model_train_overrides():
    from sidkit.config import config_from_dict

    cfg = config_from_dict({"train": {"lr": 0.01, "epochs": 7},
                            "models": [{"type": "popularity"},
                                       {"type": "sasrec", "train": {"epochs": 3}},
                                       {"type": "sasrec", "label": "sasrec-big", "hidden": 128}]})
    recs = cfg.recommenders()
    assert [label for label, _, _ in recs] == ["popularity", "sasrec", "sasrec-big"]
    assert [(t.epochs, t.lr) for _, _, t in recs] == [(7, 0.01), (3, 0.01), (7, 0.01)]
    assert recs[2][1].hidden == 128


@pytest.mark.parametrize("bad, match", [
    ({"model": {"type": "sasrec"}, "models": [{"type": "popularity"}]}, "not both"),
    ({"models": [{"type": "sasrec"}, {"type": "sasrec"}]}, "share the label 'sasrec'"),
    ({"models": [{"type": "sasrec", "train": {"epoch": 3}}]}, "unknown key 'models.0.sasrec.train.epoch'"),
    ({"models": [{"type": "sasrec", "label": "a/b"}]}, "label"),
])
def test_models_list_errors(bad, match):
    from sidkit.config import config_from_dict

    with pytest.raises(ConfigError, match=match):
        config_from_dict(bad)


def test_default_config_trains_three_models_and_cli_epochs_caps_each():
    from sidkit.commands.train import with_overrides
    from sidkit.config import load_config

    cfg = load_config(None)
    assert [label for label, _, _ in cfg.recommenders()] == ["popularity", "sasrec", "causal_sid"]
    assert cfg.codes.method == "rqkmeans" and cfg.data.dataset == "ml-100k"
    capped = with_overrides(cfg, epochs=1, seeds="3,4")
    for (_, m0, t0), (_, m1, t1) in zip(cfg.recommenders(), capped.recommenders()):
        assert t1.epochs == 1 and t1.seeds == [3, 4] and m1 == m0.model_copy(update={"train": m1.train})
        assert (t1.lr, t1.batch_size) == (t0.lr, t0.batch_size)   # the model's own overrides survive


@pytest.mark.parametrize("text, fix", [
    ('[codes]\nmethd = "x"\n', "remove or rename the key"),
    ('[train]\npatience = 0\n', "correct the value"),
    ('[train]\npatience = 0\ncolour = 1\n', "remove or rename the unknown keys and correct the values"),
])
def test_the_fix_matches_the_kind_of_error(tmp_path, text, fix):
    p = tmp_path / "c.toml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert e.value.fix.startswith(fix + "; see ")


def test_data_max_len_is_refused_and_points_to_the_models_max_len(tmp_path):
    """``[data] max_len`` was documented and validated but read by nothing (the history
    length is each model's own ``max_len``): it is refused, naming where it belongs."""
    from sidkit.config import DataConfig

    assert "max_len" not in DataConfig.model_fields
    p = tmp_path / "c.toml"
    p.write_text('[data]\nmax_len = 50\n')
    with pytest.raises(ConfigError, match=r"\[data\] max_len .*each model's max_len .*\[model\]"):
        load_config(p)
    p.write_text('[data]\nuser_core = 5\n[model]\ntype = "sasrec"\nmax_len = 7\n')
    assert load_config(p).model.max_len == 7
