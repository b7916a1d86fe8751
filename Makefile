# netweave: `make up` sets up this host and runs the agent; `make test` sets up and runs the suite.
VENV    := .venv
PY      := $(VENV)/bin/python
CLANG   ?= $(shell for v in 19 18 17 16 15 14; do command -v clang-$$v && break; done)
STRIP   ?= $(shell for v in 19 18 17 16 15 14; do command -v llvm-strip-$$v && break; done)
ARCH    := $(shell uname -m | sed -e 's/x86_64/x86/' -e 's/aarch64/arm64/')
MULTI   := $(shell gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)
OBJDIR  := src/netweave/kernel/objects
SOURCES := $(wildcard bpf/*.bpf.c)
OBJECTS := $(patsubst bpf/%.bpf.c,$(OBJDIR)/%.o,$(SOURCES))
BPF_CFLAGS := -g -O2 -Wall -Werror -target bpf -mcpu=v3 -D__TARGET_ARCH_$(ARCH) \
              -I bpf -I /usr/include/$(MULTI) $(EXTRA_BPF_CFLAGS)

TEST_SOURCES := $(wildcard tests/bpf/*.bpf.c)
TEST_OBJDIR  ?= tests/bpf/build
# Compile $$src to $$obj: DWARF stripped, BTF kept.
COMPILE = $(CLANG) $(BPF_CFLAGS) -c $$src -o $$obj.tmp && $(STRIP) -g $$obj.tmp -o $$obj && rm -f $$obj.tmp

.PHONY: up test bpf bpf-tests bench setup setup-test lint clean

up: setup bpf
	$(VENV)/bin/netweave doctor
	$(VENV)/bin/netweave agent --interval 10

test: setup-test bpf
	$(PY) -m pytest -q

setup:
	scripts/bootstrap.sh

setup-test:
	scripts/bootstrap.sh --test

# Always compiled from source: an object is never older than the code it claims to be.
bpf:
	@test -n "$(CLANG)" || { echo "make bpf: no clang-14..19 found; run scripts/bootstrap.sh" >&2; exit 1; }
	@mkdir -p $(OBJDIR)
	@rm -f $(OBJDIR)/*.o $(OBJDIR)/manifest.json
	@for src in $(SOURCES); do \
	    obj=$(OBJDIR)/$$(basename $$src .bpf.c).o; $(COMPILE) || exit 1; \
	done
	@$(PY) scripts/bpf_manifest.py $(OBJDIR)
	@echo "make bpf: $(words $(SOURCES)) objects in $(OBJDIR)"

# Programs the suite builds for itself (some of them on purpose bad); never packaged.
bpf-tests:
	@mkdir -p $(TEST_OBJDIR)
	@for src in $(TEST_SOURCES); do \
	    obj=$(TEST_OBJDIR)/$$(basename $$src .bpf.c).o; $(COMPILE) || exit 1; \
	done

bench: setup-test bpf
	@for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

lint:
	$(VENV)/bin/ruff check src tests bench scripts
	$(VENV)/bin/ruff format --check src tests bench scripts
	$(VENV)/bin/mypy

clean:
	rm -rf $(OBJDIR)/*.o $(OBJDIR)/manifest.json build *.egg-info
