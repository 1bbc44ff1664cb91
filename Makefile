# Two commands do all set-up on a fresh machine:
#   make app    -> runs the Gradio app on the shipped checkpoint (creates .venv with requirements.txt)
#   make test   -> runs the whole test suite (creates .venv-test with requirements-test.txt,
#                  installs Debian's chromium for the browser test when missing)
PYTHON ?= python3
VENV ?= .venv
TEST_VENV ?= .venv-test

.PHONY: app test test-fast bench browser mechanism memory capacity capacity-warm clean

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt
	touch $@

$(TEST_VENV)/.installed: requirements.txt requirements-test.txt
	$(PYTHON) -m venv $(TEST_VENV)
	$(TEST_VENV)/bin/python -m pip install -q --disable-pip-version-check -r requirements-test.txt
	touch $@

# Debian's chromium for the Playwright test (never a downloaded browser)
browser:
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ]; then (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	    || echo "warning: could not install chromium; the browser test will fail"; \
	  else echo "warning: /usr/bin/chromium missing and not root; the browser test will fail"; fi; \
	fi

app: $(VENV)/.installed
	$(VENV)/bin/python app.py

test: $(TEST_VENV)/.installed browser
	$(TEST_VENV)/bin/python -m pytest -q -ra

# everything except the slow interpreter / browser / load tests
test-fast: $(TEST_VENV)/.installed
	$(TEST_VENV)/bin/python -m pytest -q -ra -m "not slow"

bench: $(TEST_VENV)/.installed
	$(TEST_VENV)/bin/python -m bench.cpu_model

# docs/mechanism.md and its figures (~6-13 min on 2 cores); MECHANISM_FLAGS trade samples for time
MECHANISM_FLAGS ?= --long-seqs 4 --long-max-log2 20 --freeze-log2 13 --interv-seqs 96 --probe-train 384 --probe-test 192 --delta-seqs 48 --attn-seqs 8
mechanism: $(VENV)/.installed
	$(VENV)/bin/python -m analysis.mechanism $(MECHANISM_FLAGS)
	$(VENV)/bin/python -m viz.figures docs/mechanism/figures.json

# docs/memory/<task>.md and figures: the memory lab's report on each many-memory checkpoint, at the
# selective-copying training context (n_ctx 4,096, the paper's) and Zoology's (256, 16) MQAR setting (~2 min on 2 cores)
memory: $(VENV)/.installed
	$(VENV)/bin/python -m analysis.memory_report checkpoints/selective-copy-2layer.safetensors --length 4096
	$(VENV)/bin/python -m analysis.memory_report checkpoints/mqar-2layer.safetensors --length 256 --options '{"n_pairs": 16}'
	for f in docs/memory/*/figures.json; do $(VENV)/bin/python -m viz.figures $$f || exit 1; done

# docs/capacity.md and its plot: MQAR accuracy vs pairs for d_state 4..32 (one training per size, ~75 min on one quiet core)
CAPACITY_FLAGS ?=
capacity: $(VENV)/.installed
	$(VENV)/bin/python -m training.capacity $(CAPACITY_FLAGS)
	$(VENV)/bin/python -m viz.figures docs/capacity/figures.json

# docs/capacity-warm.md and its plot: the same question at V = 8,192, L = 256, every state size started
# from the d_model-64 MQAR model (its state resized) so that no size is left on MQAR's plateau (~65 min)
CAPACITY_WARM_FLAGS ?= --d-states 16,4,8,32 --pairs 4,8,16,32,48,64 --steps 1200 --lr 1e-3 --samples 64
capacity-warm: $(VENV)/.installed
	$(VENV)/bin/python -m training.capacity --warm-from checkpoints/mqar-2layer-d64.safetensors \
		--runs runs/capacity-warm --out docs/capacity-warm $(CAPACITY_WARM_FLAGS)
	$(VENV)/bin/python -m viz.figures docs/capacity-warm/figures.json

clean:
	rm -rf $(VENV) $(TEST_VENV) .pytest_cache
