# The two commands in the README: `make demo` and `make test`. Both set everything up first.
VENV := .venv
PY := $(VENV)/bin/python
export QT_QPA_PLATFORM ?= offscreen

.PHONY: setup demo test bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml packaging/setup-debian.sh
	bash packaging/setup-debian.sh
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

demo: setup
	$(VENV)/bin/station demo --headless

test: setup
	$(PY) -m pytest -q -p no:cacheprovider

bench: setup
	for b in tests/bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) *.egg-info
