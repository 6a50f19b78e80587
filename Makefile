# The README's commands. `make demo` and `make test` create the venv themselves.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-unit lint typecheck bench fuzz install clean

demo: $(STAMP)  ## the whole path on embedded defaults: simulator -> collectors -> lake -> Beam -> signals
	$(BIN)/fleetpulse demo $(DEMO_ARGS)

test: $(STAMP)  ## every test, including integration tests against real mosquitto / influxd / victoria-metrics
	$(BIN)/pytest $(PYTEST_ARGS)

test-unit: $(STAMP)
	$(BIN)/pytest -m "not integration" $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check fleetpulse schemas devices pipeline tests bench

# mypy reads the packages as they install (schemas/ → fleetpulse.schemas …) through a tree of
# links, so that imports between them are checked, not taken as missing modules.
TYPED := build/typed
typecheck: $(STAMP)
	rm -rf $(TYPED) && mkdir -p $(TYPED)/fleetpulse
	ln -s $(CURDIR)/fleetpulse/*.py $(TYPED)/fleetpulse/
	for pkg in schemas devices pipeline; do ln -s $(CURDIR)/$$pkg $(TYPED)/fleetpulse/$$pkg; done
	cd $(TYPED) && $(CURDIR)/$(BIN)/mypy --config-file $(CURDIR)/pyproject.toml -p fleetpulse

bench: $(STAMP)  ## benchmarks: each prints candidate/baseline ratios measured in the same run
	$(BIN)/python -m bench $(BENCH_ARGS)

FUZZ_SECONDS ?= 600
fuzz: $(STAMP)  ## hostile input through the validator, both decoders and the landing reader for FUZZ_SECONDS (not in CI)
	$(BIN)/python -m tests.fuzz --seconds $(FUZZ_SECONDS) $(FUZZ_ARGS)

install: $(STAMP)

$(STAMP): pyproject.toml setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[pipeline,demo,dev]'
	touch $(STAMP)

clean:
	rm -rf $(VENV) fleetpulse-demo build *.egg-info
