"""Publishing the book: the GitHub Pages workflow and `make publish` (ghp-import to gh-pages).

`make publish` is run against a bare repository in tmp_path, from a throwaway git work tree
holding a small fake `_build/html`; `-o install` keeps make from installing anything.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
MAKEFILE = ROOT / "Makefile"
WORKFLOW = ROOT / ".github" / "workflows" / "book.yml"
VENV = Path(sys.prefix)  # the project's .venv when run as .venv/bin/pytest (make test)


# ---------------------------------------------------------------------------------- workflow


def _workflow() -> dict:
    doc = yaml.safe_load(WORKFLOW.read_text())
    assert isinstance(doc, dict), "book.yml is not a YAML mapping"
    return doc


def _steps(doc: dict) -> list[dict]:
    return [step for job in doc["jobs"].values() for step in job.get("steps", [])]


def _makefile_targets() -> set[str]:
    targets = set()
    for line in MAKEFILE.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+(?:\s+[A-Za-z0-9_.-]+)*)\s*:(?!=)", line)
        if match:
            targets.update(match.group(1).split())
    return targets


def _readme_make_targets() -> set[str]:
    return set(re.findall(r"\bmake\s+([a-z][a-z0-9_-]*)", (ROOT / "README.md").read_text()))


def test_workflow_is_yaml_with_the_pages_structure():
    doc = _workflow()
    on = doc.get("on", doc.get(True))  # PyYAML (YAML 1.1) reads the key `on` as True
    assert on["push"]["branches"] == ["main"]
    assert "workflow_dispatch" in on
    assert doc["permissions"]["pages"] == "write"
    assert doc["permissions"]["id-token"] == "write"
    assert doc["concurrency"]["group"] == "pages"

    build = [job for job in doc["jobs"].values()
             if any("make book" in step.get("run", "") for step in job.get("steps", []))]
    assert len(build) == 1, "one job runs `make book`"
    build = build[0]
    assert build["runs-on"] == "ubuntu-latest"
    uses = [step.get("uses", "") for step in build["steps"]]
    runs = [step.get("run", "") for step in build["steps"]]
    assert any(u.startswith("actions/checkout@") for u in uses)
    python = [s for s in build["steps"] if s.get("uses", "").startswith("actions/setup-python@")]
    assert python and str(python[0]["with"]["python-version"]) == "3.11"

    # runs/ is cached on uv.lock, the library and the notebooks, with a prefix to fall back on
    cache = [s for s in build["steps"] if s.get("uses", "").startswith("actions/cache@")]
    assert len(cache) == 1
    cache = cache[0]["with"]
    assert cache["path"].strip() == "runs"
    for part in ("uv.lock", "lib/**", "notebooks/**"):
        assert part in cache["key"]
    assert "hashFiles(" in cache["key"]
    assert cache["restore-keys"].strip() and cache["key"].startswith(
        cache["restore-keys"].strip().splitlines()[0].strip())

    # the torch CPU wheel the lock names is put in /opt/wheels before `make book`
    wheel = "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"
    step_text = [yaml.safe_dump(step) for step in build["steps"]]
    get_wheel = next(i for i, text in enumerate(step_text)
                     if wheel in text and "/opt/wheels" in text)
    make_book = next(i for i, run in enumerate(runs) if "make book" in run)
    assert get_wheel < make_book
    assert "download.pytorch.org/whl/cpu" in step_text[get_wheel]
    assert "sha256sum -c" in step_text[get_wheel]

    # _build/html is uploaded after `make book`, then deployed in the github-pages environment
    upload = next(i for i, u in enumerate(uses) if u.startswith("actions/upload-pages-artifact@"))
    assert upload > make_book and build["steps"][upload]["with"]["path"] == "_build/html"
    deploy = [(name, job) for name, job in doc["jobs"].items()
              if any(s.get("uses", "").startswith("actions/deploy-pages@")
                     for s in job.get("steps", []))]
    assert len(deploy) == 1
    name, job = deploy[0]
    assert job["environment"]["name"] == "github-pages"
    needs = job.get("needs", [])
    needs = needs if isinstance(needs, list) else [needs]
    assert needs and name not in needs  # it deploys what the build job uploaded


def test_workflow_calls_only_make_targets_the_readme_names():
    called = set()
    for step in _steps(_workflow()):
        called.update(re.findall(r"\bmake\s+([a-z][a-z0-9_-]*)", step.get("run", "")))
    assert called, "the workflow runs no make target"
    assert called <= _makefile_targets(), called - _makefile_targets()
    assert called <= _readme_make_targets(), called - _readme_make_targets()


def test_publish_target_and_variables_are_in_the_makefile():
    text = MAKEFILE.read_text()
    assert "publish" in _makefile_targets()
    assert re.search(r"^PUBLISH_REMOTE\s*\?=\s*origin\s*$", text, re.M)
    assert re.search(r"^PUBLISH_BRANCH\s*\?=\s*gh-pages\s*$", text, re.M)
    assert re.search(r"^publish:\s*install\s*$", text, re.M)
    assert "publish" in _readme_make_targets()


# ---------------------------------------------------------------------------- make publish


def _git_env(tmp_path: Path) -> dict:
    """git isolated from the user's config, with an identity for ghp-import's commit."""
    config = tmp_path / "gitconfig"
    config.write_text("[user]\n\tname = Zoo Book Test\n\temail = test@zoobook.invalid\n"
                      "[init]\n\tdefaultBranch = main\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GIT_CONFIG_GLOBAL=str(config), GIT_CONFIG_NOSYSTEM="1", HOME=str(tmp_path))
    return env


def _git(env: dict, *args: str, cwd: Path | None = None) -> str:
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, text=True,
                          capture_output=True).stdout


def _repo_with_remote(tmp_path: Path, env: dict) -> tuple[Path, Path]:
    remote = tmp_path / "remote.git"
    _git(env, "init", "-q", "--bare", str(remote))
    work = tmp_path / "work"
    work.mkdir()
    _git(env, "init", "-q", cwd=work)
    (work / "README.md").write_text("a team's Zoo Book\n")
    _git(env, "add", "README.md", cwd=work)
    _git(env, "commit", "-q", "-m", "first", cwd=work)
    return work, remote


def _make_publish(work: Path, env: dict, remote: Path, *extra: str):
    # -o install: take install as done (the test never installs); VENV: the project's .venv
    return subprocess.run(
        ["make", "--no-print-directory", "-f", str(MAKEFILE), "-o", "install", "publish",
         f"VENV={VENV}", f"PUBLISH_REMOTE={remote}", *extra],
        cwd=work, env=env, text=True, capture_output=True, timeout=60)


def test_make_publish_pushes_the_built_book_to_gh_pages(tmp_path):
    assert (VENV / "bin" / "ghp-import").is_file(), "ghp-import is in uv.lock: make install puts it in .venv"
    env = _git_env(tmp_path)
    work, remote = _repo_with_remote(tmp_path, env)
    html = work / "_build" / "html"
    (html / "_static").mkdir(parents=True)
    (html / "index.html").write_text("<html><body>Zoo Book</body></html>\n")
    (html / "_static" / "x.css").write_text("body { color: black; }\n")

    done = _make_publish(work, env, remote)
    assert done.returncode == 0, done.stdout + done.stderr

    files = _git(env, f"--git-dir={remote}", "ls-tree", "-r", "--name-only", "gh-pages").split()
    assert set(files) == {"index.html", "_static/x.css", ".nojekyll"}
    shown = _git(env, f"--git-dir={remote}", "show", "gh-pages:index.html")
    assert "Zoo Book" in shown
    # the working branch is left alone
    assert _git(env, "rev-parse", "--abbrev-ref", "HEAD", cwd=work).strip() == "main"

    # PUBLISH_BRANCH names another branch; a second publish replaces the pages (-f)
    (html / "index.html").write_text("<html><body>second</body></html>\n")
    done = _make_publish(work, env, remote, "PUBLISH_BRANCH=pages")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "second" in _git(env, f"--git-dir={remote}", "show", "pages:index.html")


def test_make_publish_without_a_built_book_says_run_make_book(tmp_path):
    env = _git_env(tmp_path)
    work, remote = _repo_with_remote(tmp_path, env)
    (work / "_build" / "html").mkdir(parents=True)  # a build folder without index.html
    done = _make_publish(work, env, remote, "GHP_IMPORT=false")
    assert done.returncode != 0
    assert "_build/html/index.html is missing" in done.stderr
    assert "run make book first" in done.stderr
    branches = _git(env, f"--git-dir={remote}", "branch", "--list")
    assert branches.strip() == ""
