"""The documentation site: a strict MkDocs build, no broken internal link, the generated pages
in step with the code, and the home page rendered by a real browser (headless Chromium).

The build needs the ``docs`` extra (``pip install -e ".[docs]"``); the browser check needs
Debian's ``chromium``. Each part is skipped, with the reason, when its tool is missing.
"""

from __future__ import annotations

import argparse
import html
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS_MODULES = (
    "mkdocs",
    "material",
    "mkdocstrings",
    "mkdocstrings_handlers.python",
    "mkdocs_gen_files",
)
NAVIGATION = ("Getting started", "User guide", "CLI reference", "Gallery", "API reference")
QUIET = {"NO_MKDOCS_2_WARNING": "1", "DISABLE_MKDOCS_2_WARNING": "true"}  # theme banners


def _missing_docs_modules() -> list[str]:
    missing = []
    for name in DOCS_MODULES:
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:  # a parent package is missing
            found = False
        if not found:
            missing.append(name)
    return missing


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site built by ``mkdocs build --strict`` into a temporary directory."""
    missing = _missing_docs_modules()
    if missing:
        pytest.skip(
            f"the docs extra is not installed ({', '.join(missing)}): pip install -e '.[docs]'"
        )
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env={**os.environ, **QUIET},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stderr[-4000:]}"
    return out


class _Links(HTMLParser):
    """Every ``href`` and ``src`` of a page, and every ``id`` it defines."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for key, value in attrs:
            if key in ("href", "src") and value is not None:
                self.links.append(value)
            elif key in ("id", "name") and value is not None:
                self.ids.add(value)


def _parse(path: Path) -> _Links:
    parser = _Links()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def _target(site: Path, page: Path, link: str) -> tuple[Path, str] | None:
    """The file (and fragment) an internal link points to; ``None`` for an external link."""
    parts = urlsplit(link)
    if parts.scheme or parts.netloc or link.startswith(("mailto:", "javascript:", "data:")):
        return None
    if not parts.path:  # "#fragment": this page
        return page, parts.fragment
    path = (
        (site / parts.path.lstrip("/"))
        if parts.path.startswith("/")
        else page.parent / unquote(parts.path)
    )
    path = path.resolve()
    if path.is_dir():
        path = path / "index.html"
    return path, parts.fragment


def test_expected_pages(site: Path) -> None:
    pages = [
        "index.html",
        "getting-started/index.html",
        "cli/index.html",
        "gallery/index.html",
        "coming-from/index.html",
        "benchmarks/index.html",
        *(f"guide/{c}/index.html" for c in ("fit", "density", "cavi", "estimators", "vae", "show")),
        *(
            f"api/{m}/index.html"
            for m in ("flowvi", "flows", "transforms", "targets", "pyro", "vae")
        ),
    ]
    missing = [page for page in pages if not (site / page).is_file()]
    assert not missing, f"pages missing from the build: {missing}"
    gallery = html.unescape(re.sub(r"<[^>]+>", "", (site / "gallery" / "index.html").read_text()))
    for script in ("figure1", "figure3", "density", "vae_latent2d"):  # included by snippets
        source = (ROOT / "docs" / "gallery" / f"{script}.py").read_text(encoding="utf-8")
        absent = [line for line in source.splitlines() if line.strip() not in gallery]
        assert not absent, f"{script}.py is not shown whole on the gallery page: {absent[:3]}"
    api = (site / "api" / "flowvi" / "index.html").read_text(encoding="utf-8")
    for name in ("fit", "load", "save", "evaluate", "NormalizingFlow", "set_num_threads"):
        assert f'id="flowvi.{name}"' in api, f"flowvi.{name} is not documented on the API page"


def test_no_broken_internal_link(site: Path) -> None:
    parsed = {page.resolve(): _parse(page) for page in sorted(site.rglob("*.html"))}
    broken = []
    for page, links in parsed.items():
        for link in links.links:
            target = _target(site, page, link)
            if target is None:
                continue
            path, fragment = target
            where = f"{page.relative_to(site.resolve())}: {link}"
            if not path.exists():
                broken.append(f"{where} (no file)")
            elif fragment and path in parsed and unquote(fragment) not in parsed[path].ids:
                broken.append(f"{where} (no anchor)")
    assert not broken, "broken internal links:\n" + "\n".join(broken[:50])


def test_cli_reference_follows_the_parser(site: Path) -> None:
    """Every option of every command and subcommand appears on the generated CLI page."""
    from flowvi.app.cli import parser as flowvi_parser

    page = (site / "cli" / "index.html").read_text(encoding="utf-8")

    def walk(parser: argparse.ArgumentParser, name: str) -> None:
        assert f"usage: {name}" in page, f"no help of {name!r} on the CLI page"
        for action in parser._actions:
            for option in action.option_strings:
                assert option in page, f"{name} {option} is missing from the CLI page"
            if isinstance(action, argparse._SubParsersAction):
                for sub, subparser in action.choices.items():
                    walk(subparser, f"{name} {sub}")

    walk(flowvi_parser(), "flowvi")
    assert "usage: flowvi vae train" in page and "usage: flowvi vae gap" in page


def _options(parser: argparse.ArgumentParser) -> set[str]:
    """The option strings of ``parser`` and of all its subcommands."""
    found = set()
    for action in parser._actions:
        found.update(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            for subparser in action.choices.values():
                found |= _options(subparser)
    return found


@pytest.mark.parametrize("command", ["fit", "density", "cavi", "estimators", "vae", "show"])
def test_guide_names_only_real_options(command: str) -> None:
    """Every ``--option`` a user guide page mentions is an option of its command (no docs extra
    needed): the guide cannot describe an option that does not exist, or one since renamed."""
    from flowvi.app.cli import parser as flowvi_parser

    parser = next(
        action.choices[command]
        for action in flowvi_parser()._actions
        if isinstance(action, argparse._SubParsersAction)
    )
    text = (ROOT / "docs" / "guide" / f"{command}.md").read_text(encoding="utf-8")
    mentioned = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", text))
    others = {"--nproc_per_node", "--nproc"}  # torchrun's, in the vae page
    unknown = sorted(mentioned - _options(parser) - others)
    assert not unknown, (
        f"docs/guide/{command}.md mentions options flowvi {command} lacks: {unknown}"
    )


def _gallery_module(name: str):
    spec = importlib.util.spec_from_file_location(
        f"_gallery_{name}", ROOT / "docs" / "gallery" / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("budget", ["full", "quick"])
def test_gallery_scripts_use_real_options(budget: str) -> None:
    """The gallery scripts' command lines parse with today's parser (needs no docs extra)."""
    from flowvi.app.cli import parser as flowvi_parser

    quick = budget == "quick"
    argvs = [
        _gallery_module("figure1").arguments("out", quick=quick),
        _gallery_module("figure3").arguments("out", quick=quick),
        _gallery_module("density").arguments("out", quick=quick),
        *_gallery_module("vae_latent2d").commands("out", quick=quick),
    ]
    parser = flowvi_parser()
    for argv in argvs:
        try:
            parser.parse_args(argv)
        except SystemExit:  # argparse reports the bad option on stderr
            pytest.fail(f"a gallery command line no longer parses: flowvi {' '.join(argv)}")


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _browser(site: Path, profile: Path, *flags: str) -> subprocess.CompletedProcess:
    command = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--window-size=1280,900",
        *flags,
        (site / "index.html").as_uri(),
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def test_index_renders_in_chromium(site: Path, tmp_path: Path) -> None:
    if _chromium() is None:
        pytest.skip("chromium is not installed (Debian: apt-get install -y chromium)")
    shot = site / "screenshot.png"
    result = _browser(site, tmp_path / "profile-shot", f"--screenshot={shot}")
    assert shot.is_file(), f"no screenshot; chromium said:\n{result.stderr[-2000:]}"
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000, "an empty screenshot"

    result = _browser(site, tmp_path / "profile-dom", "--dump-dom")
    dom = result.stdout
    assert result.returncode == 0 and "</html>" in dom, (
        f"no DOM; chromium said:\n{result.stderr[-2000:]}"
    )
    assert "md-nav--primary" in dom, "the rendered page has no navigation"
    for label in NAVIGATION:
        assert label in dom, f"the rendered navigation lacks {label!r}"
    assert 'href="guide/fit/"' in dom and 'href="api/flowvi/"' in dom
