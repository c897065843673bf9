# The two commands:  make demo  (set up, run the whole pipeline on generated tickets)
#                    make test  (set up, run the whole test suite against a real broker)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test check bench-stream bench-banking77 bench-drift clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	./scripts/pip-install $(BIN)/python -e ".[train,dev,analysis,monitor]"
	touch $@

demo: $(BIN)/.installed
	$(BIN)/protege demo

test: $(BIN)/.installed
	./scripts/ensure-debian-packages
	$(BIN)/python -m pytest

check: $(BIN)/.installed
	./scripts/check

bench-banking77: $(BIN)/.installed
	$(BIN)/protege bench stream --train ../shared/data/banking77/banking77_train.jsonl \
	    --test ../shared/data/banking77/banking77_test.jsonl --report-json reports/bench-stream-banking77.json

bench-drift: $(BIN)/.installed
	$(BIN)/protege bench drift --data ../shared/data/banking77/banking77_train.jsonl \
	    --data ../shared/data/banking77/banking77_test.jsonl \
	    --report-json reports/bench-drift-banking77.json --plot docs/bench-drift.png

clean:
	rm -rf .protege $(VENV)
