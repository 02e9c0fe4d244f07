# The two commands of the README. Each creates the virtualenv when missing and (re)installs the project when
# pyproject.toml changed, so a fresh clone needs nothing else.
PY ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PY) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/cirflow demo

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/python -m pytest -q

bench: $(STAMP)
	$(VENV)/bin/python bench/topk_circo.py

clean:
	rm -rf .cirflow build *.egg-info
