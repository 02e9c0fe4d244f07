"""Run configs: examples validate; bad input is one clear line naming the file and field; no inline secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from cirflow.cli.main import main
from cirflow.schemas.config import load_config
from cirflow.schemas.errors import ConfigError

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load_example(path: Path):
    """Each example through the loader its command uses."""
    from cirflow.cli.build import load_build_config
    from cirflow.schemas.compare import load_compare_config
    from cirflow.schemas.refine import load_refine_config

    name = path.stem
    if name.startswith("build_"):
        return load_build_config(name.split("_")[1], str(path))
    if "compare" in name or "sweep" in name:
        return load_compare_config(path)
    if name.startswith("refine"):
        return load_refine_config(path)
    if "ablation" in name:
        from cirflow.flows.ip_cir import load_ablation_config

        return load_ablation_config(path)
    return load_config(path)


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_examples_validate(path):
    assert _load_example(path) is not None


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
