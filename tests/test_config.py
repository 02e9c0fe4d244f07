"""Run configs: examples validate; bad input is one clear line naming the file and field; no inline secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from cirflow.cli.main import main
from cirflow.schemas.config import load_config
from cirflow.schemas.errors import ConfigError

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.parametrize("path", sorted(p for p in EXAMPLES.glob("*.yaml") if "compare" not in p.name
                                         and "sweep" not in p.name), ids=lambda p: p.name)
def test_examples_validate(path):
    cfg = load_config(path)
    assert cfg.benchmark.name in ("cirr", "circo", "fashioniq", "genecis")


def _write(tmp_path, text):
    p = tmp_path / "run.yaml"
    p.write_text(text)
    return p


BASE = """
benchmark: {name: cirr, data_root: /x}
mllm: {backend: http, model: m, base_url: "http://127.0.0.1:1/v1"}
encoder: {model: ViT-B-32}
"""


def test_unknown_key_names_file_and_field(tmp_path):
    p = _write(tmp_path, BASE + "compose: {temprature: 0.3}\n")
    with pytest.raises(ConfigError, match=r"run\.yaml: field 'compose\.temprature': Extra inputs"):
        load_config(p)


def test_cli_bad_config_is_one_line_exit_2(tmp_path, capsys):
    p = _write(tmp_path, BASE + "mode: t2x\n")
    assert main(["run", str(p)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "field 'mode'" in err[0] and err[0].startswith("cirflow: error:")


def test_not_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(_write(tmp_path, "benchmark: [unclosed\n"))
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_inline_credentials_are_refused(tmp_path):
    p = _write(tmp_path, BASE + "storage_options: {secret: abc}\n")
    with pytest.raises(ConfigError, match="storage_options"):
        load_config(p)


def test_image_modes_need_diffusion(tmp_path):
    with pytest.raises(ConfigError, match="diffusion"):
        load_config(_write(tmp_path, BASE + "mode: i2i\n"))
