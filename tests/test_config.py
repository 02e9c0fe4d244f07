"""Run configs: examples validate through the method registry; `cirflow deploy` makes every path field absolute; bad input is one clear line naming the file and field; no inline secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from cirflow.cli.main import main
from cirflow.flows.registry import load_config
from cirflow.schemas.errors import ConfigError

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load_example(path: Path):
    """Each example through the registry, as its command loads it (`cirflow run` / `sweep` / `build KIND`)."""
    from cirflow.flows.registry import load_config as load

    return load(path)


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


def test_each_method_config_has_only_its_own_sections(tmp_path):
    """No union of every method's sections: an LDRE section in a PEFUSE config is a typo, not a silent default."""
    with pytest.raises(ConfigError, match=r"field 'ldre': Extra inputs"):
        load_config(_write(tmp_path, BASE + "ldre: {n_captions: 3}\n"))
    with pytest.raises(ConfigError, match=r"field 'ip_cir': Extra inputs"):
        load_config(_write(tmp_path, BASE + "method: cirevl\nip_cir: {}\n"))
    assert load_config(_write(tmp_path, BASE + "method: ldre\nldre: {n_captions: 3}\n")).ldre.n_captions == 3


def test_unknown_method_and_command_mismatch(tmp_path):
    with pytest.raises(ConfigError, match="method 'nope' has no flow"):
        load_config(_write(tmp_path, BASE + "method: nope\n"))
    with pytest.raises(ConfigError, match="not 'sweep'"):
        load_config(_write(tmp_path, BASE + "method: ldre\n"), "sweep")


def test_help_imports_no_prefect_or_torch():
    import subprocess
    import sys

    code = ("import sys\nfrom cirflow.cli.main import build_parser\nbuild_parser()\n"
            "print(sorted(m for m in ('prefect', 'torch', 'diffusers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stderr[-2000:]


def _path_values(cfg) -> list[str]:
    """Every value held by a declared path field of a validated config, nested sections and lists included."""
    from pydantic import BaseModel

    from cirflow.schemas.paths import PathField, _markers

    out = []
    for name, info in type(cfg).model_fields.items():
        value = getattr(cfg, name)
        marked = [m for m in info.metadata if isinstance(m, PathField)] + _markers(info.annotation)
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, BaseModel):
                out += _path_values(v)
            elif isinstance(v, str) and marked:
                out.append(v)
    return out


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_deploy_makes_every_path_field_of_every_example_absolute(path, tmp_path):
    """Every example with its absolute /data/... paths made relative (as a user might write them): deploy
    resolution, which walks the config model, leaves no relative path in any path field (under `base:`, in
    collection, release, prompts, encoder weights alike), and validates through the registry."""
    from cirflow.flows.deploy import load_deploy_config
    from cirflow.flows.registry import parse_config

    for example in EXAMPLES.glob("*.yaml"):  # `base:` may name another example file
        text = example.read_text().replace(": /data/", ": data/").replace("{out_dir: /data/", "{out_dir: data/")
        text = text.replace("uri: /data/", "uri: data/")
        (tmp_path / example.name).write_text(text)
    (tmp_path / "prompts").mkdir()
    relative = tmp_path / path.name
    deploy_dir = tmp_path / "deploy"
    cfg = load_deploy_config(relative, base_dir=deploy_dir)
    resolved = parse_config(cfg)  # the deployed parameter validates again by its method's config class
    values = _path_values(resolved)
    assert values, "no path field found"

    def strings(node):
        if isinstance(node, dict):
            return [s for v in node.values() for s in strings(v)]
        if isinstance(node, list):
            return [s for v in node for s in strings(v)]
        return [node] if isinstance(node, str) else []

    # any field, declared or not: a relative data path left anywhere is a path field deploy missed
    relative_left = [v for v in strings(cfg) if v.startswith(("data/", "local-dir:data/"))]
    assert not relative_left, relative_left
    moved = [v for v in values if v.startswith(str(deploy_dir / "data"))]
    assert moved, values  # the relative data paths now point under the deploying directory


def test_deploy_resolves_nested_prompts_models_and_lists(tmp_path):
    from cirflow.flows.deploy import load_deploy_config

    raw = {"method": "compare", "name": "c", "modes": ["t2i"],
           "base": {"method": "pefuse", "store": "s3://bucket/store", "output_dir": "runs",
                    "benchmark": {"name": "cirr", "data_root": "cirr", "image_root": "~/images"},
                    "mllm": {"backend": "transformers", "model": "./models/mllm"},
                    "encoder": {"model": "local-dir:enc", "pretrained": "weights/clip.safetensors",
                                "tokenizer": "tok"},
                    "compose": {"prompt": "prompts/compose.txt"}, "caption": {"prompt": "caption.txt"}},
           "encoders": [{"model": "local-dir:enc2", "pretrained": "openai"}]}
    cfg = load_deploy_config(raw, base_dir=tmp_path)
    b = cfg["base"]
    assert b["store"] == "s3://bucket/store"  # URLs are left alone
    assert b["output_dir"] == str(tmp_path / "runs") and b["benchmark"]["data_root"] == str(tmp_path / "cirr")
    assert b["benchmark"]["image_root"] == str(Path("~/images").expanduser())
    assert b["mllm"]["model"] == str(tmp_path / "models/mllm")
    assert b["encoder"] == {**b["encoder"], "model": f"local-dir:{tmp_path / 'enc'}",
                            "pretrained": str(tmp_path / "weights/clip.safetensors"), "tokenizer": str(tmp_path / "tok")}
    assert b["compose"]["prompt"] == str(tmp_path / "prompts/compose.txt")
    assert b["caption"]["prompt"] == str(tmp_path / "caption.txt")
    assert cfg["encoders"][0]["model"] == f"local-dir:{tmp_path / 'enc2'}" and cfg["encoders"][0]["pretrained"] == "openai"
    ldre = load_deploy_config({"method": "ldre", "benchmark": {"name": "circo", "data_root": "/d"},
                               "mllm": {"backend": "http", "model": "org/m", "base_url": "http://h:1/v1"},
                               "encoder": {"model": "ViT-B-32"}}, base_dir=tmp_path)
    assert ldre["reference_caption"]["prompt"] == "detailed"  # a built-in prompt name is not a path
    assert ldre["mllm"]["model"] == "org/m" and ldre["store"] == str(tmp_path / ".cirflow/store")
