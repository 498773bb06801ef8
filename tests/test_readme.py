"""The README stays true to the code: its config example loads, its metric table is the registry's."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from publisher.config import load_settings
from publisher.metrics import Metrics

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def section(title: str) -> str:
    start = README.index(f"## {title}")
    end = README.find("\n## ", start + 1)
    return README[start:end if end != -1 else None]


def test_config_example_is_a_valid_config(tmp_path: Path) -> None:
    example = re.search(r"```yaml\n(.*?)```", section("Configuration"), re.S)
    assert example is not None
    config = yaml.safe_load(example[1])
    pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    (tmp_path / "key.pem").write_bytes(pem)
    (tmp_path / "zll.key").write_text("c2VjcmV0LWtleQ==\n")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    # the example's secret paths are a deployment's; point them at files that exist here
    environ = {
        "FILLPUB_SOURCES__KALSHI_MAIN__PRIVATE_KEY_FILE": str(tmp_path / "key.pem"),
        "FILLPUB_SOURCES__ZLL_MAIN__API_KEY_FILE": str(tmp_path / "zll.key"),
    }
    settings = load_settings(path, environ)
    assert [s.name for s in settings.config.sources] == ["kalshi-main", "zll-main"]
    assert settings.config.http.port == 9108


def test_metric_table_lists_exactly_what_the_registry_exports() -> None:
    # fillpub_build_info is documented with the endpoints in docs/operations.md
    operations = (Path(__file__).resolve().parent.parent / "docs" / "operations.md").read_text()
    tables = section("Metrics and endpoints") + operations
    table = set(re.findall(r"^\| `(fillpub_[a-z_]+)", tables, re.M))
    exported = {family.name for family in Metrics().registry.collect()}
    # prometheus-client's standard process_* and python_info, documented as such
    assert {"process_cpu_seconds", "process_resident_memory_bytes", "python_info"} <= exported
    families = {name for name in exported if name.startswith("fillpub_")}
    # prometheus_client names counter families without their _total suffix
    documented = {name.removesuffix("_total") for name in table}
    assert documented == families
