# make test   fresh machine: venv, install, kernel, test suite
# make book   fresh machine: venv, install, kernel, run every model's stages, build the book
# make lab    JupyterLab on the notebooks, with the project's kernel
# make lock   re-resolve pylock.toml (and pylock.lab.toml) to the newest versions
#             pyproject.toml allows; a reviewed change: run `make test` on it before committing

VENV    ?= .venv
PYTHON  ?= python3
PROFILE ?= default
BACKEND ?= auto
PY      := $(VENV)/bin/python
PIP     := $(PY) -m pip install --disable-pip-version-check -q -c constraints.txt
STAMP   := $(VENV)/.zoobook-installed
PIPPIN  := pip==26.3
# The lock is PEP 751's pylock.toml. pip-tools resolves the ranges of pyproject.toml (newest
# versions allowed, hashes), `pip lock` writes that resolution as pylock.toml with each wheel's
# address and sha256: every package from PyPI, torch's CPU build from TORCH_WHEELS.
LOCKENV := .lock-venv
TORCH_WHEELS ?= /opt/wheels
COMPILE := $(LOCKENV)/bin/pip-compile -q --generate-hashes --allow-unsafe --strip-extras \
           --no-emit-index-url --no-emit-find-links --upgrade -c constraints.txt
PIPLOCK := $(LOCKENV)/bin/pip lock -q --isolated --index-url https://pypi.org/simple \
           --find-links $(TORCH_WHEELS) --no-deps -c constraints.txt

.PHONY: install test book lab lock clean

# Every package at the version and hash in pylock.toml (pip >= 25.1 installs a PEP 751 lock
# and checks every hash), then the library itself (editable, no dependencies: the lock holds them).
$(STAMP): pylock.toml pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q $(PIPPIN)
	$(PIP) -r pylock.toml
	$(PIP) --no-deps --no-build-isolation -e .
	$(PY) -m ipykernel install --sys-prefix --name zoobook --display-name "Zoo Book (.venv)" >/dev/null
	touch $@

install: $(STAMP)

test: install
	$(VENV)/bin/pytest

book: install
	$(VENV)/bin/zoobook book --profile $(PROFILE) --backend $(BACKEND)
	@echo "open _build/html/index.html"

lab: install
	$(PIP) -r pylock.lab.toml
	$(VENV)/bin/jupyter lab notebooks

lock:
	test -x $(LOCKENV)/bin/pip-compile || { $(PYTHON) -m venv $(LOCKENV) && \
	    $(LOCKENV)/bin/pip install --disable-pip-version-check -q $(PIPPIN) pip-tools==7.6.2; }
	rm -f $(LOCKENV)/resolved*.txt
	$(COMPILE) --extra test -o $(LOCKENV)/resolved.txt pyproject.toml
	$(COMPILE) -c $(LOCKENV)/resolved.txt --extra test --extra lab -o $(LOCKENV)/resolved-lab.txt pyproject.toml
	$(PIPLOCK) -r $(LOCKENV)/resolved.txt -o pylock.toml
	$(PIPLOCK) -r $(LOCKENV)/resolved-lab.txt -o pylock.lab.toml

clean:
	rm -rf _build runs book/summary.md book/*/[0-9][0-9]-*.ipynb
