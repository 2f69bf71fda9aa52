# make test   fresh machine: venv, install, kernel, test suite
# make book   fresh machine: venv, install, kernel, run every model's stages, build the book
# make lab    JupyterLab on the notebooks, with the project's kernel

VENV    ?= .venv
PYTHON  ?= python3
PROFILE ?= default
BACKEND ?= auto
PY      := $(VENV)/bin/python
PIP     := $(PY) -m pip install --disable-pip-version-check -q -c constraints.txt
STAMP   := $(VENV)/.zoobook-installed

.PHONY: install test book lab clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) -e '.[test]'
	$(PY) -m ipykernel install --sys-prefix --name zoobook --display-name "Zoo Book (.venv)" >/dev/null
	touch $@

install: $(STAMP)

test: install
	$(VENV)/bin/pytest

book: install
	$(VENV)/bin/zoobook book --profile $(PROFILE) --backend $(BACKEND)
	@echo "open _build/html/index.html"

lab: install
	$(PIP) -e '.[lab]'
	$(VENV)/bin/jupyter lab notebooks

clean:
	rm -rf _build runs book/summary.md book/*/[0-9][0-9]-*.ipynb
