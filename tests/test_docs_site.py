"""The docs site builds with `mkdocs build --strict`: every page of docs/ (in the nav or declared not_in_nav),
every link and anchor between them, and the API reference generated from the docstrings.

The site is written to a temporary directory, never into the checkout. A planted broken anchor and a planted
link to a missing page, in a small site with the same settings, fail the build: the check can fail.
README.md, outside the site, links into it: those links name files that exist.
"""

import glob
import os
import re
import subprocess
import sys

import yaml

from conftest import REPO


def _build(config: str, site: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", config,
                           "--site-dir", site], cwd=os.path.dirname(config), capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, NO_MKDOCS_2_WARNING="1"))


def _nav_pages(nav) -> list[str]:
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, dict):
        return [p for v in nav.values() for p in _nav_pages(v)]
    return [p for item in nav for p in _nav_pages(item)]


def test_the_site_builds_strict(tmp_path):
    out = _build(os.path.join(REPO, "mkdocs.yml"), str(tmp_path / "site"))
    assert out.returncode == 0, f"mkdocs build --strict failed:\n{out.stdout[-3000:]}\n{out.stderr[-6000:]}"
    assert os.path.exists(tmp_path / "site" / "api" / "kd" / "index.html")
    html = open(tmp_path / "site" / "api" / "kd" / "index.html", encoding="utf-8").read()
    assert "salt_jax.kd.schedules" in html  # the API reference is generated, not an empty page


def test_every_top_level_page_is_in_the_nav():
    """Each docs/*.md and docs/api/*.md is a chapter; the run reports under docs/ subfolders are built too
    (in the nav, or not_in_nav: mkdocs.yml says which)."""
    config = yaml.safe_load(open(os.path.join(REPO, "mkdocs.yml")))
    nav = set(_nav_pages(config["nav"]))
    pages = {os.path.relpath(p, os.path.join(REPO, "docs"))
             for p in glob.glob(os.path.join(REPO, "docs", "*.md")) + glob.glob(os.path.join(REPO, "docs", "api", "*.md"))}
    assert pages - nav == set(), f"pages of docs/ missing from mkdocs.yml's nav: {sorted(pages - nav)}"
    assert all(os.path.exists(os.path.join(REPO, "docs", p)) for p in nav), nav


def test_a_broken_anchor_or_link_fails_the_build(tmp_path):
    """The same settings (validation, strict) over a two-page site: a link to a heading that does not exist,
    and one to a page that does not exist, each fail the build, naming the link."""
    config = yaml.safe_load(open(os.path.join(REPO, "mkdocs.yml")))
    config.pop("not_in_nav", None)
    config["plugins"] = ["search"]
    config["nav"] = ["index.md", "a.md"]
    for link, named in (("a.md#no-such-heading", "no-such-heading"), ("missing.md", "missing.md")):
        root = tmp_path / named.replace(".", "_")
        (root / "docs").mkdir(parents=True)
        (root / "docs" / "a.md").write_text("# A\n\n## A heading\n")
        (root / "docs" / "index.md").write_text(f"# Home\n\nSee [a](a.md#a-heading) and [there]({link}).\n")
        (root / "mkdocs.yml").write_text(yaml.safe_dump(config))
        out = _build(str(root / "mkdocs.yml"), str(root / "site"))
        assert out.returncode != 0 and named in out.stderr, (link, out.stderr[-2000:])


def test_the_readmes_links_point_at_files():
    """README.md is outside the site (its front page on the repository): its relative links, into the site's
    pages and the reports, name files that exist."""
    text = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    links = [m for m in re.findall(r"\]\(([^)\s]+)\)", text) if not re.match(r"[a-z]+:", m)]
    assert len(links) >= 20, links
    missing = [link for link in links if not os.path.exists(os.path.join(REPO, link.split("#")[0]))]
    assert not missing, f"README.md links to files that do not exist: {missing}"
