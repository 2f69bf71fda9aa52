# make test   fresh machine: venv, install, kernel, test suite
# make book   fresh machine: venv, install, kernel, run every model's stages, build the book
# make lab    JupyterLab on the notebooks, with the project's kernel
# make lock   re-resolve uv.lock to the newest versions pyproject.toml allows; a reviewed change:
#             run `make test` on it before committing

VENV    ?= .venv
PYTHON  ?= python3
PROFILE ?= default
BACKEND ?= auto
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.zoobook-installed
# uv.lock is the lock. uv itself (pinned) lives in its own small venv, .tools/, unless UV names
# another: `make UV=uv` uses one already on PATH.
UV_VERSION := 0.13.9
UV      ?= .tools/bin/uv
SYNC    := UV_PROJECT_ENVIRONMENT=$(VENV) $(UV) sync --frozen --python $(PYTHON) --extra test

.PHONY: install test book lab lock clean

unexport PYTHONDONTWRITEBYTECODE

.tools/bin/uv:
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --disable-pip-version-check -q -c constraints.txt uv==$(UV_VERSION)

# Every package at the version and hash uv.lock holds (--frozen: the lock is used as it is,
# never re-resolved), the library itself editable, then the notebooks' Jupyter kernel.
# Bytecode: Python writes a module's .pyc into .venv the first time it is imported, so only what
# the stages import gets compiled (uv's --compile-bytecode compiles all ~11,000 files: 38 s on 2
# cores). Where PYTHONDONTWRITEBYTECODE is set, every stage's kernel would compile torch & co.
# again (about 2 s per stage), so make's recipes run without it.
$(STAMP): uv.lock pyproject.toml | $(UV)
	$(SYNC)
	$(PY) -m ipykernel install --sys-prefix --name zoobook --display-name "Zoo Book (.venv)" >/dev/null
	touch $@

install: $(STAMP)

test: install
	$(VENV)/bin/pytest

book: install
	$(VENV)/bin/zoobook book --profile $(PROFILE) --backend $(BACKEND)
	@echo "open _build/html/index.html"

# JupyterLab is the lock's `lab` extra; --inexact keeps the kernel spec and everything else.
lab: install
	$(SYNC) --extra lab --inexact
	$(VENV)/bin/jupyter lab notebooks

lock: | $(UV)
	$(UV) lock --upgrade

clean:
	rm -rf _build runs book/summary.md book/matrix.md book/compare.md book/*/[0-9][0-9]-*.ipynb

# make publish   push the book `make book` built (_build/html) to the gh-pages branch of a remote,
#                as it is: it never rebuilds the book, so the pages are that run's records.
#                -n writes .nojekyll (GitHub Pages would otherwise hide Sphinx's _static/).
PUBLISH_REMOTE ?= origin
PUBLISH_BRANCH ?= gh-pages

.PHONY: publish
publish: install
	@test -f _build/html/index.html || { echo "make publish: _build/html/index.html is missing: run make book first" >&2; exit 1; }
	$(VENV)/bin/ghp-import -n -p -f -r $(PUBLISH_REMOTE) -b $(PUBLISH_BRANCH) \
	    -m "Zoo Book built from $$(git rev-parse --short HEAD 2>/dev/null || echo 'an unknown commit')" _build/html
