# The two commands of the README. Each creates the virtualenv when missing and (re)installs the project when
# pyproject.toml changed, so a fresh clone needs nothing else.
PY ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test bench clean sysdeps

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PY) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/cirflow demo

# Debian packages some tests drive for real: headless Chromium (the HTML report) and PostgreSQL (the deployment
# test starts its own cluster). Installed when missing and when we may (root); otherwise those tests skip,
# except on CI (CI=true), where they fail.
sysdeps:
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium) \
		|| echo "warning: could not install chromium: the HTML report test will skip"
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq postgresql) \
		|| echo "warning: could not install postgresql: the Postgres deployment test will skip"
	@command -v docker-compose >/dev/null || (apt-get update -qq && apt-get install -y -qq docker-compose) \
		|| echo "warning: could not install docker-compose: the compose file validation test will skip"

test: $(STAMP) sysdeps
	HF_HUB_OFFLINE=1 $(VENV)/bin/python -m pytest -q

bench: $(STAMP)
	$(VENV)/bin/python bench/topk_circo.py

clean:
	rm -rf .cirflow build *.egg-info
