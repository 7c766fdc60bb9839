# The two commands of the README:
#   make search   the main job (sets everything up first)
#   make test     the whole test suite (sets everything up first)
#   make test-fast  the fast tier, for the edit loop (no search end to end, no multi-process training)
# Set-up is idempotent: a virtual environment in .venv with the project and its dev extras, then
# Horovod 0.28.1 built from source against the installed TensorFlow (CPU/Gloo; see
# scripts/install_horovod.sh for why the plain pip install fails and how to build with NCCL).

PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HVD := $(VENV)/.horovod

PANOPTICA := .venv-panoptica

.PHONY: setup search test test-fast docs mutants bench clean chromium panoptica slurm pyc

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/python -m pip install --quiet -e '.[dev,searchers,tracking,docs]'
	touch $@

$(HVD): $(STAMP) scripts/install_horovod.sh
	PYTHON=$(BIN)/python bash scripts/install_horovod.sh
	touch $@

setup: $(HVD)

search: setup
	$(BIN)/python run_search.py

# The report's browser test needs Debian's Chromium (installed here once; as root or with sudo).
chromium:
	@command -v chromium >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && $$SUDO apt-get install -y -q chromium; }

# The SLURM test runs a real single-node SLURM: Debian's slurmctld, slurmd and munge (installed here
# once; as root or with sudo; the test starts and stops the daemons itself).
slurm:
	@test -x /usr/sbin/slurmd -a -x /usr/sbin/munged || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && $$SUDO apt-get install -y -q slurm-wlm munge; }

# panoptica (the library the official BraTS evaluation is built on) is the lesion-wise scores' test
# oracle, in a venv of its own: it pins numpy<2.3, pandas<3 and rich<14, older than the project's.
panoptica:
	PANOPTICA_VENV=$(PANOPTICA) bash scripts/panoptica_env.sh

# Two pytest-xdist workers, a test file per worker at a time (module fixtures are built once), the
# longest files first (tests/conftest.py): the two cores stay busy (the end-to-end tests' Ray
# trials and commands are CPU work), 19-23 minutes on 2 cores (BENCHMARKS.md). TEST_WORKERS=0 runs
# them in one process. The slowest 30 are listed at the end.
TEST_WORKERS ?= 2
test: setup chromium panoptica slurm pyc
	$(BIN)/python -m pytest -ra -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=30

# The package's bytecode, compiled once: where PYTHONDONTWRITEBYTECODE is set (as on these machines)
# Python would otherwise compile its modules anew in each of the few hundred processes the suite
# starts (about 0.2 CPU-s for a process that loads the search; BENCHMARKS.md).
pyc: setup
	$(BIN)/python -m compileall -q -j 0 unet3d search spaces run_search.py > /dev/null

# The docs site (mkdocs.yml) into site/ (git-ignored): the reference pages written from the code
# first (scripts/gen_reference.py), the build strict (a broken link or a missing page fails).
docs: setup
	$(BIN)/python scripts/gen_reference.py
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site
	@echo "read it: $(BIN)/python -m http.server --bind 127.0.0.1 --directory site, then http://127.0.0.1:8000"

# The edit loop's tier: every test that runs no search end to end and no multi-process training
# (those are marked slow; CI runs them all with `make test`). About 3 minutes on 2 cores.
test-fast: setup pyc
	$(BIN)/python -m pytest -ra -m "not slow" -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=10

# The mutation check (scripts/mutants.toml): each hand-written bug planted in a scratch copy, the
# share the fast tier and the whole suite catch, per module (BENCHMARKS.md). --fast-only: minutes.
mutants: setup
	$(BIN)/python scripts/mutation_check.py $(MUTANTS_ARGS)

bench: setup
	$(BIN)/python benchmarks/bench_train_step.py

clean:
	rm -rf $(VENV) $(PANOPTICA) .pytest_cache
