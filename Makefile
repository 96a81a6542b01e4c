# The two commands in the README: `make demo` and `make test`. Both set everything up first.
VENV := .venv
PY := $(VENV)/bin/python
export QT_QPA_PLATFORM ?= offscreen

.PHONY: setup demo screenshots test bench bundle clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml setup.py packaging/setup-debian.sh tests/tools/particle-cli/package.json
	bash packaging/setup-debian.sh
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

# The window needs a display: the real one; else Xvfb (nobody can see or close it there, so the demo closes
# itself after the batch and leaves screenshots/demo.png); else the terminal. The offscreen default above is
# for the tests: the window gets the platform Qt picks unless QT_QPA_PLATFORM came from the environment.
GUI_ENV := $(if $(filter file,$(origin QT_QPA_PLATFORM)),env -u QT_QPA_PLATFORM,)
XVFB := xvfb-run -a -s "-screen 0 1600x1000x24"

demo: setup
	@if [ -n "$$DISPLAY$$WAYLAND_DISPLAY" ]; then \
		$(GUI_ENV) $(VENV)/bin/station demo; \
	elif command -v xvfb-run >/dev/null; then \
		echo "demo: no display; the window runs under Xvfb and closes after the batch (screenshots/demo.png)"; \
		mkdir -p screenshots; \
		STATION_DEMO_AUTOQUIT=1 STATION_DEMO_SCREENSHOT=screenshots/demo.png $(GUI_ENV) $(XVFB) \
			$(VENV)/bin/station demo; \
	else \
		echo "demo: no display and no xvfb-run (apt-get install xvfb xauth); running in the terminal"; \
		$(VENV)/bin/station demo --headless; \
	fi

# The window's main states as PNG (screenshots/, git-ignored), then a full screen of 24 boards at 1600x1000
# and of 16 at 1280x800, mid-batch and done, into docs/screenshots/; 24 at 1600x1000 done is docs/screenshot.png.
screenshots: setup
	mkdir -p screenshots docs/screenshots
	$(GUI_ENV) $(XVFB) $(PY) -m ui.screenshots screenshots
	$(GUI_ENV) xvfb-run -a -s "-screen 0 1600x1000x24" $(PY) -m ui.screenshots docs/screenshots --size 1600x1000 --boards 24
	$(GUI_ENV) xvfb-run -a -s "-screen 0 1280x800x24" $(PY) -m ui.screenshots docs/screenshots --size 1280x800 --boards 16
	cp docs/screenshots/24-boards-1600x1000-done.png docs/screenshot.png

test: setup
	$(PY) -m pytest -q -p no:cacheprovider

bench: setup
	for b in tests/bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

# The one-folder bundle (no Python needed on the target): dist/provisioning-station/station
bundle: setup
	$(VENV)/bin/pip install -q -e '.[bundle]'
	$(VENV)/bin/pyinstaller --noconfirm --clean --distpath dist --workpath build/pyinstaller packaging/station.spec
	@echo "bundle: dist/provisioning-station/ ($$(du -sh dist/provisioning-station | cut -f1)); run dist/provisioning-station/station"

clean:
	rm -rf $(VENV) *.egg-info build dist
