"""The documentation says what the code does: the config reference is the config's own table, the
README is a front page whose links lead somewhere, and every script a page names exists."""
import re
from pathlib import Path

from derivcheck.run.config import KEYS, LAYER_KEYS

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "README.md"]


def _table(text: str, heading: str) -> dict:
    """The `key | meaning` rows of the first table after ``heading``."""
    rows = {}
    for line in text.split(heading, 1)[1].split("\n\n", 2)[1].splitlines():
        m = re.match(r"^\| `([a-z-]+)` \| (.*) \|$", line)
        if m:
            rows[m.group(1)] = m.group(2)
    return rows


def test_the_config_reference_is_the_configs_own_table():
    doc = (ROOT / "docs" / "ci.md").read_text()
    assert _table(doc, "Top-level keys") == {k: v.replace("|", "/") for k, v in KEYS.items()}
    assert _table(doc, "Keys of each") == {k: v.replace("|", "/") for k, v in LAYER_KEYS.items()}


def test_the_readme_is_a_front_page():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 300


def test_every_link_and_script_a_page_names_exists():
    missing = []
    for page in PAGES:
        text = page.read_text()
        for link in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if not link.startswith("http") and not (page.parent / link).exists():
                missing.append(f"{page.relative_to(ROOT)}: {link}")
        for script in re.findall(r"\b((?:bench|examples|tests)/[\w/]+\.(?:py|md|json))\b", text):
            if not (ROOT / script).exists():
                missing.append(f"{page.relative_to(ROOT)}: {script}")
    assert missing == []


def test_the_readme_links_every_page_of_docs():
    readme = (ROOT / "README.md").read_text()
    assert all(f"docs/{p.name}" in readme for p in (ROOT / "docs").glob("*.md")), "a page of docs/ no one can find"
    assert "bench/README.md" in readme
