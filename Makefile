# make test   fresh machine: venv, install, kernel, test suite
# make book   fresh machine: venv, install, kernel, run every model's stages, build the book
# make lab    JupyterLab on the notebooks, with the project's kernel
# make lock   re-resolve requirements.txt (and requirements-lab.txt) to the newest versions
#             pyproject.toml allows; a reviewed change: run `make test` on it before committing

VENV    ?= .venv
PYTHON  ?= python3
PROFILE ?= default
BACKEND ?= auto
PY      := $(VENV)/bin/python
PIP     := $(PY) -m pip install --disable-pip-version-check -q -c constraints.txt
STAMP   := $(VENV)/.zoobook-installed
LOCKENV := .lock-venv
COMPILE := CUSTOM_COMPILE_COMMAND="make lock" $(LOCKENV)/bin/pip-compile -q --generate-hashes --allow-unsafe --strip-extras \
           --no-emit-index-url --no-emit-find-links --upgrade -c constraints.txt

.PHONY: install test book lab lock clean

# Every package at the version and hash in requirements.txt, then the library itself
# (editable, no dependencies: the lock already holds them all).
$(STAMP): requirements.txt pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) --require-hashes -r requirements.txt
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
	$(PIP) --require-hashes -r requirements-lab.txt
	$(VENV)/bin/jupyter lab notebooks

lock:
	test -x $(LOCKENV)/bin/pip-compile || { $(PYTHON) -m venv $(LOCKENV) && \
	    $(LOCKENV)/bin/pip install --disable-pip-version-check -q pip-tools==7.6.2; }
	$(COMPILE) --extra test -o requirements.txt pyproject.toml
	$(COMPILE) -c requirements.txt --extra test --extra lab -o requirements-lab.txt pyproject.toml

clean:
	rm -rf _build runs book/summary.md book/*/[0-9][0-9]-*.ipynb
