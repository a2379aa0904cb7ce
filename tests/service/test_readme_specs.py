"""Every study spec shown in README.md is accepted as shown."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

README = Path(__file__).resolve().parents[2] / "README.md"
BLOCK = re.compile(r"^```(yaml|json)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def _specs() -> list[tuple[str, str]]:
    """(language, text) of each YAML/JSON block that is a study spec (has a search_space)."""
    found = []
    for lang, text in BLOCK.findall(README.read_text()):
        data = yaml.safe_load(text)  # plain YAML 1.1 is enough to find them
        if isinstance(data, dict) and "search_space" in data:
            found.append((lang, text))
    return found


SPECS = _specs()


def test_the_readme_shows_a_spec() -> None:
    assert SPECS, "README.md has no ```yaml or ```json study spec"


@pytest.mark.parametrize(("lang", "text"), SPECS, ids=[f"spec{i}" for i in range(len(SPECS))])
def test_a_readme_spec_submits_as_shown(client: TestClient, lang: str, text: str) -> None:
    """The README's own spec was a 422: YAML 1.1 reads its `on:` key as the boolean True."""
    r = client.post("/studies", content=text.encode(), headers={"Content-Type": f"application/{lang}"})
    assert r.status_code == 201, r.text
    assert r.json()["n_trials"] == yaml.safe_load(text)["n_trials"]


def test_a_bare_on_key_is_accepted(client: TestClient) -> None:
    """The README quotes "on" for other YAML readers; written bare, as users do, it is the same key."""
    (text,) = [t for lang, t in SPECS if lang == "yaml" and '"on":' in t]
    bare = text.replace('"on":', "on:")
    assert yaml.safe_load(bare)["search_space"]["lambda"].get(True) == "aux_loss", "YAML 1.1 reads it as True"
    r = client.post("/studies", content=bare.encode(), headers={"Content-Type": "application/yaml"})
    assert r.status_code == 201, r.text


def test_on_off_yes_no_keys_stay_strings_values_do_not() -> None:
    from trainer.config import load_yaml

    assert load_yaml("on: 1\noff: 2\nyes: 3\nno: 4\n'true': 5\nv: on\n") == {
        "on": 1,
        "off": 2,
        "yes": 3,
        "no": 4,
        "true": 5,
        "v": True,
    }


def test_the_client_submits_a_readme_spec_file(client: TestClient, tmp_path: Path) -> None:
    """`gat-tune submit FILE` goes through Client.submit, which sends the file as written."""
    from service.client import Client

    path = tmp_path / "spec.yaml"
    path.write_text(SPECS[0][1])
    api = Client("http://testserver")
    api.http = client  # a TestClient is an httpx.Client
    assert api.submit(path)["name"] == yaml.safe_load(SPECS[0][1])["name"]
