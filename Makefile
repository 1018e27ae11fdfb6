# bioft: two commands on a fresh machine with Python 3.11+
#   make book   set up .venv, execute every notebook (BIOFT_PROFILE, default smoke), build the HTML book
#   make test   set up .venv, run the unit tests and every notebook under nbval (smoke profile)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU wheel of torch 2.13.0 is the tested one. GPU users: use environment.yml (conda) instead of this venv.
TORCH_SPEC ?= torch==2.13.0
export BIOFT_PROFILE ?= smoke
STAMP  := $(VENV)/.bioft-installed

.PHONY: book test venv screenshots clean help
help:
	@sed -n '2,3p' Makefile

venv: $(STAMP)
$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c constraints.txt "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[book,dev]"
	@touch $@

book: $(STAMP)
	HF_HUB_OFFLINE=$${HF_HUB_OFFLINE-1} $(BIN)/python tools/build_book.py --profile $(BIOFT_PROFILE) $(if $(SCREENSHOTS),--screenshots)

screenshots: $(STAMP)
	$(BIN)/python tools/build_book.py --profile $(BIOFT_PROFILE) --screenshots

test: $(STAMP)
	BIOFT_PROFILE=smoke HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 \
	  $(BIN)/python -m pytest -q tests notebooks --nbval-lax -p no:cacheprovider

clean:
	rm -rf _build
