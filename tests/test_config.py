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
