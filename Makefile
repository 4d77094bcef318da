# moetape: every set-up step lives here; nothing is installed by hand.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_PIN := torch==2.13.0
PYTEST_NOT_SLOW := -m "not slow"

.PHONY: install system-deps browser test test-all test-notorch lint wheel-check bench demo golden clean

install: $(STAMP)

$(STAMP): setup.py pyproject.toml
	@$(MAKE) --no-print-directory system-deps
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	# Pin torch first: an unpinned torch pulls a CUDA build of several GB.
	$(BIN)/python -m pip install -q "$(TORCH_PIN)"
	$(BIN)/python -m pip install -q -e '.[record,dev,rerun,sweep,gpu,train]' --config-settings editable_mode=strict
	# rsl-rl-lib (PPO for `make train-demo`) without its declared torchvision/onnx, which would replace
	# the pinned CPU torch; what it imports is in the 'train' extra.
	$(BIN)/python -m pip install -q --no-deps "rsl-rl-lib==2.3.3"
	touch $(STAMP)

# Headless MuJoCo rendering (EGL, OSMesa fallback) and video encoding need a few system libraries.
system-deps: browser
	@missing=""; \
	for lib in libEGL.so.1 libOpenGL.so.0 libOSMesa.so; do \
	  ldconfig -p 2>/dev/null | grep -q "$$lib" || missing="$$missing $$lib"; \
	done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing rendering libraries (missing:$$missing)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libegl1 libopengl0 libgl1-mesa-dri libosmesa6 >/dev/null) \
	    || echo "warning: apt-get failed; headless rendering may not work"; \
	else \
	  echo "note: for headless rendering install: libegl1 libopengl0 libgl1-mesa-dri libosmesa6 (missing:$$missing)"; \
	fi

# The web viewer test (tests/replay/test_rerun.py) drives headless Chromium; Debian's package has it.
browser:
	@if command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing chromium (headless browser for the Rerun web viewer test)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	    || echo "warning: apt-get install chromium failed; the web viewer test will be skipped"; \
	else \
	  echo "note: install chromium for the Rerun web viewer test (apt-get install chromium)"; \
	fi

test: install
	$(BIN)/pytest $(PYTEST_NOT_SLOW) -q

test-all: install
	$(BIN)/pytest -q

# The laptop install: no torch, no mujoco. Tests that need them skip; everything else must pass.
NOTORCH := .venv-notorch
test-notorch:
	test -x $(NOTORCH)/bin/python || $(PY) -m venv $(NOTORCH)
	$(NOTORCH)/bin/python -m pip install -q --upgrade pip setuptools wheel
	$(NOTORCH)/bin/python -m pip install -q -e '.[dev]' --config-settings editable_mode=strict
	$(NOTORCH)/bin/python -c "import importlib.util as u; assert u.find_spec('torch') is None, 'torch is installed in $(NOTORCH)'"
	$(NOTORCH)/bin/pytest $(PYTEST_NOT_SLOW) -q

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/vermin --no-tips --violations -t=3.8- schema record
	$(BIN)/mypy schema replay
	$(BIN)/lint-imports

wheel-check: install
	rm -rf dist && $(BIN)/python -m pip wheel -q --no-deps -w dist .
	$(BIN)/python -c "import zipfile,glob; print('\n'.join(sorted(zipfile.ZipFile(glob.glob('dist/*.whl')[0]).namelist())))"

bench: install
	$(BIN)/python bench/write.py
	@if [ -f bench/record.py ]; then $(BIN)/python bench/record.py; fi
	@if [ -f bench/derive.py ]; then $(BIN)/python bench/derive.py; fi
	$(BIN)/python bench/rerun.py
	$(BIN)/python bench/sweep.py
	$(BIN)/python bench/gpu.py

demo: install
	$(BIN)/moetape demo --force

# Train the demo policy (record/assets/demo_policy/; about 15-20 min on 2 CPU cores). rsl-rl-lib goes in
# without its declared deps (torchvision, onnx: never imported), which would replace the CPU torch.
.PHONY: train-demo
train-demo: install
	$(BIN)/python -m pip install -q --no-deps "rsl-rl-lib==2.3.3"
	$(BIN)/python -m pip install -q "GitPython>=3.1"
	$(BIN)/python scripts/train_demo_policy.py --out-dir record/assets/demo_policy --force

golden: install
	$(BIN)/python tests/data/make_v1.py

clean:
	rm -rf .pytest_cache .ruff_cache .mypy_cache .hypothesis dist
	find . -name __pycache__ -not -path "./$(VENV)/*" -prune -exec rm -rf {} +
