from pathlib import Path

import pytest

from afprobe import AfprobeError
from afprobe.activations import CacheRunConfig
from afprobe.config import apply_overrides, load_config


def test_overrides_parse_yaml_scalars_and_nest() -> None:
    out = apply_overrides({"a": {"b": 1}}, ["a.b=2", "a.c=[1, 2]", "d.e=text", "f=null"])
    assert out == {"a": {"b": 2, "c": [1, 2]}, "d": {"e": "text"}, "f": None}


def test_file_then_set_then_validate(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("cache:\n  batch_size: 4\nmodel:\n  name: tiny\n")
    cfg = load_config(CacheRunConfig, p, ["cache.layers=[0, 2]"])
    assert cfg.cache.batch_size == 4 and cfg.cache.layers == [0, 2] and cfg.model.name == "tiny"


@pytest.mark.parametrize(
    ("sets", "needle"),
    [
        (["cache.nope=1"], "unknown key 'cache.nope'"),
        (["cache.batch_size=many"], "key 'cache.batch_size'"),
        (["cache.dtype=float8"], "key 'cache.dtype'"),
        (["model.device=tpu"], "key 'model.device'"),
        (["novalue"], "key=value"),
    ],
)
def test_bad_keys_and_types_name_the_key(sets: list[str], needle: str) -> None:
    with pytest.raises(AfprobeError, match=needle.replace("[", r"\[")):
        load_config(CacheRunConfig, None, sets)


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(AfprobeError, match="not found"):
        load_config(CacheRunConfig, tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(AfprobeError, match="not valid YAML"):
        load_config(CacheRunConfig, bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("3\n")
    with pytest.raises(AfprobeError, match="mapping"):
        load_config(CacheRunConfig, scalar)
