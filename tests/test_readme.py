"""The README and the docs stay true to the code.

The README is a front page (at most 12,000 bytes) whose commands and minimal config work and whose
links resolve; the full config example of docs/configuration.md loads; the metric table of
docs/operations.md is the registry's.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from publisher.config import load_settings
from publisher.metrics import Metrics

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()
CONFIGURATION = (REPO / "docs" / "configuration.md").read_text()
OPERATIONS = (REPO / "docs" / "operations.md").read_text()
MAX_README_BYTES = 12_000
#: docs the README links that other branches write (the lead merges them)
WRITTEN_ELSEWHERE = {"docs/delivery-guarantees.md", "docs/running-several-instances.md", "docs/venues.md",
                     "docs/audit.md"}


def section(text: str, title: str) -> str:
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else None]


def load_example(text: str, tmp_path: Path) -> object:
    example = re.search(r"```yaml\n(.*?)```", text, re.S)
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
    return load_settings(path, environ)


def test_config_example_is_a_valid_config(tmp_path: Path) -> None:
    settings = load_example(section(CONFIGURATION, "Full example"), tmp_path)
    assert [s.name for s in settings.config.sources] == ["kalshi-main", "zll-main"]  # type: ignore[attr-defined]
    assert settings.config.http.port == 9108  # type: ignore[attr-defined]


def test_full_example_names_every_kafka_setting() -> None:
    from publisher.config import KafkaConfig

    example = section(CONFIGURATION, "Full example")
    # a secret's *_env half is named in the comment beside its *_file
    missing = [f for f in KafkaConfig.__struct_fields__ if not re.search(rf"^  {f}:|# or {f}\b", example, re.M)]
    assert not missing, missing


def test_readme_minimal_config_is_a_valid_config(tmp_path: Path) -> None:
    settings = load_example(README, tmp_path)
    assert [s.name for s in settings.config.sources] == ["kalshi-main", "zll-main"]  # type: ignore[attr-defined]


def test_metric_table_lists_exactly_what_the_registry_exports() -> None:
    table = set(re.findall(r"^\| `(fillpub_[a-z_]+)", section(OPERATIONS, "Metrics"), re.M))
    families = {family.name for family in Metrics().registry.collect()}
    # prometheus_client names counter families without their _total suffix
    documented = {name.removesuffix("_total") for name in table}
    assert documented == {f for f in families if f.startswith("fillpub_")}
    # the library's own families are named as a group
    assert {f.split("_")[0] for f in families if not f.startswith("fillpub_")} <= {"process", "python"}
    assert "`process_*`, `python_info`" in section(OPERATIONS, "Metrics")


def test_readme_is_a_front_page() -> None:
    assert len(README.encode()) <= MAX_README_BYTES
    # the test command is .ci/run's, verbatim
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    ci_command = ci[ci.index("# The README's test command, verbatim:") + 1]
    assert ci_command.startswith("python3 -m venv .venv &&") and ci_command.endswith("-m pytest")
    assert ci_command in README
    assert "fill-publisher demo" in README
    # no optimisation history on the front page: it lives in bench/README.md
    assert "instructions" not in README and "before ->" not in README


@pytest.mark.parametrize("link", sorted(set(re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", README))))
def test_readme_links_resolve(link: str) -> None:
    if not (REPO / link).exists() and link in WRITTEN_ELSEWHERE:
        pytest.skip(f"{link} is written on another branch")
    assert (REPO / link).exists(), link


def test_docs_anchors_the_readme_uses_exist() -> None:
    for path, anchor in re.findall(r"\]\((docs/[a-z-]+\.md)#([^)]+)\)", README):
        headings = {re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-")
                    for h in re.findall(r"^#+ (.+)$", (REPO / path).read_text(), re.M)}
        assert anchor in headings, (path, anchor)


#: a path inside this repository, as docs, comments and messages write them (not part of a URL)
REPO_PATH = re.compile(r"(?<![\w/.-])((?:publisher|docs|tests|bench|helm|deploy|schemas|shared|seeds)/[\w./*{}-]*\.(?:py|md|ya?ml|json|txt|toml|tpl))\b")


def tracked_text_files() -> list[Path]:
    import subprocess

    listed = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    return [REPO / name for name in listed if (REPO / name).suffix in {".py", ".md", ".yaml", ".yml", ".json", ".toml",
                                                                     ".tpl", ".txt", ""} and (REPO / name).is_file()]


def test_every_repository_path_named_in_code_comments_and_docs_exists() -> None:
    missing = []
    for path in tracked_text_files():
        text = path.read_text(errors="replace")
        for line_no, line in enumerate(text.splitlines(), 1):
            for named in REPO_PATH.findall(line):
                if "{" in named or named in WRITTEN_ELSEWHERE:
                    continue
                if not (list(REPO.glob(named)) if "*" in named else (REPO / named).exists()):
                    missing.append(f"{path.relative_to(REPO)}:{line_no}: {named}")
    assert missing == []


def test_development_layout_names_every_module() -> None:
    layout = section((REPO / "docs" / "development.md").read_text(), "Layout")
    rows = [line for line in layout.splitlines() if line.startswith("| `")]
    unnamed = []
    for module in sorted((REPO / "publisher").rglob("*.py")):
        rel = module.relative_to(REPO / "publisher")
        if rel.name == "__init__.py":
            continue
        folder = "publisher/" + "".join(f"{part}/" for part in rel.parts[:-1])
        if not any(row.split("|")[1].strip().startswith(f"`{folder}") and
                   (f"`{folder}{rel.name}`" in row or f"`{rel.name}`" in row) for row in rows):
            unnamed.append(str(rel))
    assert unnamed == []


def anchors(doc: Path) -> set[str]:
    """The anchors GitHub makes of a Markdown file's headings."""
    return {re.sub(r"[^a-z0-9 _-]", "", heading.strip().lower()).replace(" ", "-")
            for heading in re.findall(r"^#+ (.+)$", doc.read_text(), re.M)}


def test_every_relative_link_of_the_docs_resolves() -> None:
    broken = []
    for doc in [p for p in tracked_text_files() if p.suffix == ".md"]:
        for target, anchor in re.findall(r"\]\(([^)\s#]*)(?:#([^)\s]*))?\)", doc.read_text()):
            if re.match(r"[a-z]+:", target):
                continue  # a URL
            resolved = (doc.parent / target).resolve() if target else doc
            if str(resolved.relative_to(REPO)) in WRITTEN_ELSEWHERE and not resolved.exists():
                continue
            if not resolved.exists() or (anchor and resolved.suffix == ".md" and anchor not in anchors(resolved)):
                broken.append(f"{doc.relative_to(REPO)}: {target}#{anchor}")
    assert broken == []


def test_keys_backfill_and_the_audit_are_documented_from_the_readme() -> None:
    assert "(docs/venues.md)" in README and "(docs/audit.md)" in README
    venues = anchors(REPO / "docs" / "venues.md")
    assert {"kalshi-keys-rsa-and-ed25519", "historical-fills-and-the-cutoff", "backfill_from"} <= venues
    audit = (REPO / "docs" / "audit.md").read_text()
    from publisher.audit import COMPARED_FIELDS, SETTLE_MARGIN_S

    # the compared fields and the settle margin as the code has them
    assert ", ".join(f"`{name}`" for name in COMPARED_FIELDS) in " ".join(audit.split())
    assert f"settle margin of {SETTLE_MARGIN_S:g} s" in audit
