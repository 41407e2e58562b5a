# PicoMDM — one plain GNU Makefile.
#
#   make            build every binary into bin/ (and regenerate docs/bus.md)
#   make deps       install the Debian 12 packages listed in deps.txt that are missing
#   make check      unit + integration tests, then unit tests again under ASan+UBSan,
#                   then a short fuzz smoke run; ends with the runner's summary line
#   make check T=pm_msg   run one test (unit test name or tests/it/<name>.sh)
#   make run        deps + build + `bin/picomdm up` (the whole MDM on this host)
#   make bench      benchmarks (figures, not pass/fail)
#   make fuzz       run every libFuzzer target for FUZZ_SECONDS each
#   make lint       clang-format check + banned functions
#
# Layout rules (so new code needs no Makefile edit):
#   proto/*.c common/*.c          -> build/<v>/libpicomdm.a (shared by every process)
#   <proc>/*.c                    -> bin/picomdm-<proc>   (broker gateway store scheduler pusher ca)
#   tools/<name>/*.c              -> bin/<name>           (picomdm, picomdm-devsim, picomdm-fake-apns)
#   tests/tools/<name>.c          -> build/<v>/tt/<name>  (helper programs for integration tests)
#   any */*_test.c                -> build/<v>/test/<name> (cmocka; linked with its folder's
#                                    modules except main.c; tools/<name>/*_test.c likewise)
#   tests/fuzz/fuzz_<name>.c      -> build/fuzz/fuzz_<name> (clang libFuzzer; fuzz_<proc>
#                                    also links <proc>/*.c except main.c)

VARIANT ?= rel
B       := build/$(VARIANT)
ifeq ($(VARIANT),rel)
BIN     := bin
SAN     :=
OPT     ?= -O2 -g
else ifeq ($(VARIANT),asan)
BIN     := $(B)/bin
SAN     := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
OPT     ?= -O1 -g
else ifeq ($(VARIANT),fuzz)
CC      := clang
BIN     := $(B)/bin
SAN     := -fsanitize=fuzzer-no-link,address,undefined -fno-omit-frame-pointer
OPT     ?= -O1 -g
endif

PKGS     := libzmq libczmq libsodium openssl libplist-2.0 libcurl sqlite3 msgpack libevent \
            libevent_openssl libnghttp2
PKG_CFLAGS = $(shell pkg-config --cflags $(PKGS) cmocka 2>/dev/null)
PKG_LIBS   = $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lpthread -lm
CMOCKA     = $(shell pkg-config --libs cmocka 2>/dev/null)

WARN     := -Wall -Wextra -Werror -Wshadow -Wformat=2 -Wno-missing-field-initializers
CFLAGS   := -std=c11 -D_GNU_SOURCE $(OPT) $(WARN) $(SAN) -Iproto -Icommon -MMD -MP
LDFLAGS  := $(SAN)

PROCS    := broker gateway store scheduler pusher ca
TOOLS    := $(notdir $(patsubst %/,%,$(wildcard tools/*/)))
srcs      = $(filter-out %_test.c,$(wildcard $(1)/*.c))
objs      = $(patsubst %.c,$(B)/%.o,$(1))

LIB_SRC  := $(call srcs,proto) $(call srcs,common)
LIB      := $(B)/libpicomdm.a

PROC_BINS := $(foreach p,$(PROCS),$(if $(call srcs,$(p)),$(BIN)/picomdm-$(p)))
TOOL_BINS := $(foreach t,$(TOOLS),$(if $(call srcs,tools/$(t)),$(BIN)/$(t)))
TT_SRC    := $(wildcard tests/tools/*.c)
TT_BINS   := $(patsubst tests/tools/%.c,$(B)/tt/%,$(TT_SRC))
TEST_SRC  := $(wildcard proto/*_test.c common/*_test.c $(addsuffix /*_test.c,$(PROCS)) \
               tools/*/*_test.c)
TEST_BINS := $(foreach t,$(TEST_SRC),$(B)/test/$(notdir $(t:_test.c=)))

.PHONY: all bins tests deps check run bench fuzz fuzz-bins lint clean install docs
.DEFAULT_GOAL := all

all: bins tests $(if $(wildcard proto/gen/busdoc.c),docs/bus.md)
bins: $(PROC_BINS) $(TOOL_BINS)
tests: $(TEST_BINS) $(TT_BINS)

$(B)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(PKG_CFLAGS) -c -o $@ $<

$(LIB): $(call objs,$(LIB_SRC))
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^

# The allocator of the rel daemons listed in ALLOC_PROCS: mimalloc (Debian 12
# libmimalloc2.0, in deps.txt) replaces glibc's malloc in the whole process when
# the binary links it ahead of libc (no source change; OpenSSL, libevent, libplist
# and czmq allocate through it). The gateway makes ~300 small allocations per
# device request, most of them OpenSSL's; docs/gateway.md "Session 7" has the
# figures. Not in the asan/fuzz variants (the sanitizers bring their own malloc);
# a build without the library falls back to glibc's malloc with a warning.
# ALLOC_TOOLS: the same for tools; the device simulator shares the benches'
# two cores with the servers (docs/devsim.md "Session 9": -4.8 % instructions
# per request with mimalloc).
# The broker: docs/bus.md "Session 10, buscpu3" (-1.3 % of its loop thread's
# instructions, peak RSS +1 MB). The store: docs/queue.md "Session 11,
# storesvc" (-3 to -5 % of its instructions per request, peak RSS +2-3 MB);
# session 10 had taken it off because its rare memory jump was larger with
# mimalloc, a jump since found and bounded in proto/pm_bus.c (the reply
# cache's index, "Session 10, memjump").
# The ca: OpenSSL makes ~1,200 allocations per enrollment there (a PKCSReq ~980,
# a profile ~220); docs/enrollment.md "Session 11, cacpu" has the figures.
ALLOC_PROCS := gateway broker store ca
ALLOC_TOOLS := picomdm-devsim
MIMALLOC    := $(shell $(CC) -print-file-name=libmimalloc.so.2 2>/dev/null)
ifeq ($(VARIANT),rel)
ifneq ($(filter /%,$(MIMALLOC)),)
ALLOC_LIBS  := -Wl,--push-state,--no-as-needed -l:libmimalloc.so.2 -Wl,--pop-state
else
$(warning libmimalloc.so.2 not found (make deps installs libmimalloc2.0): $(ALLOC_PROCS) $(ALLOC_TOOLS) built with glibc's malloc)
endif
endif

# one binary per process folder
define PROC_RULE
$(BIN)/picomdm-$(1): $(call objs,$(call srcs,$(1))) $(LIB)
	@mkdir -p $$(dir $$@)
	$$(CC) $$(LDFLAGS) -o $$@ $$^ $(if $(filter $(1),$(ALLOC_PROCS)),$$(ALLOC_LIBS)) $$(PKG_LIBS)
endef
$(foreach p,$(PROCS),$(eval $(call PROC_RULE,$(p))))

define TOOL_RULE
$(BIN)/$(1): $(call objs,$(call srcs,tools/$(1))) $(LIB)
	@mkdir -p $$(dir $$@)
	$$(CC) $$(LDFLAGS) -o $$@ $$^ $(if $(filter $(1),$(ALLOC_TOOLS)),$$(ALLOC_LIBS)) $$(PKG_LIBS)
endef
$(foreach t,$(TOOLS),$(eval $(call TOOL_RULE,$(t))))

$(B)/tt/%: $(B)/tests/tools/%.o $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(PKG_LIBS)

# a unit test links its own folder's modules (minus main.c) and the library
define TEST_RULE
$(B)/test/$(notdir $(1:_test.c=)): $(call objs,$(1) $(filter-out $(dir $(1))main.c,$(call srcs,$(patsubst %/,%,$(dir $(1)))))) $(LIB)
	@mkdir -p $$(dir $$@)
	$$(CC) $$(LDFLAGS) -o $$@ $$^ $$(CMOCKA) $$(PKG_LIBS)
endef
$(foreach t,$(TEST_SRC),$(eval $(call TEST_RULE,$(t))))

# the bus reference is generated from the message table (proto/pm_msgtab.def)
$(B)/gen-busdoc: $(B)/proto/gen/busdoc.o $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(PKG_LIBS)
docs/bus.md: $(B)/gen-busdoc
	$< > $@.tmp && mv $@.tmp $@

# ---- fuzzing (clang libFuzzer) ----
FUZZ_SRC  := $(wildcard tests/fuzz/fuzz_*.c)
FUZZ_BINS := $(patsubst tests/fuzz/%.c,build/fuzz/%,$(FUZZ_SRC))
FUZZ_SECONDS ?= 60
fuzz-bins:
	$(if $(FUZZ_BINS),$(MAKE) VARIANT=fuzz $(FUZZ_BINS),@echo "fuzz: no targets yet")
build/fuzz/fuzz_%: build/fuzz/tests/fuzz/fuzz_%.o $(LIB)
	$(CC) -fsanitize=fuzzer,address,undefined -o $@ $(filter-out $(LIB),$^) $(LIB) $(PKG_LIBS)
# a fuzzer named after a process (fuzz_gateway) also links that folder's modules (minus main.c)
$(foreach p,$(PROCS),$(eval build/fuzz/fuzz_$(p): $(call objs,$(filter-out $(p)/main.c,$(call srcs,$(p))))))
fuzz: fuzz-bins
	@for f in $(FUZZ_BINS); do n=$${f##*/fuzz_}; mkdir -p build/fuzz/corpus/$$n; \
	  echo "== $$f ($(FUZZ_SECONDS)s)"; \
	  $$f -max_total_time=$(FUZZ_SECONDS) build/fuzz/corpus/$$n tests/fuzz/corpus/$$n || exit 1; done

# ---- the things people type ----
deps:
	@missing=$$(grep -v '^\s*#' deps.txt | grep -v '^\s*$$' | while read p; do \
	  dpkg-query -W -f='$${Status}\n' "$$p" 2>/dev/null | grep -q '^install ok installed' || echo "$$p"; done); \
	if [ -z "$$missing" ]; then echo "deps: all $$(grep -cv '^\s*\(#\|$$\)' deps.txt) packages installed"; \
	else echo "deps: installing" $$missing; \
	  SUDO=; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q $$missing; fi

JOBS ?= $(shell nproc 2>/dev/null || echo 2)
check:
	$(MAKE) -j$(JOBS) all
	$(MAKE) -j$(JOBS) VARIANT=asan tests
	$(MAKE) -j$(JOBS) fuzz-bins
	@tests/run.sh $(T)

run: deps
	$(MAKE) -j$(JOBS) all
	bin/picomdm up

bench: all
	@tests/bench.sh

lint:
	@fail=0; files=$$(git ls-files '*.c' '*.h'); \
	clang-format --dry-run -Werror $$files || fail=1; \
	if grep -nE '\b(sprintf|strcpy|strcat|atoi|gets)\s*\(' $$files; then \
	  echo "lint: banned function (use snprintf, memcpy with a bound, strtol)"; fail=1; fi; \
	[ $$fail = 0 ] && echo "lint: ok"; exit $$fail

# ---- man pages and install (deploy/, docs/deploy.md) ----
#   make man       man pages from each program's --help (help2man) + man/*.h2m -> build/man
#   make install PREFIX=/usr/local DESTDIR=
#                  daemons -> $(SBINDIR), picomdm and tools -> $(BINDIR), systemd units
#                  -> $(UNITDIR), man pages -> $(MANDIR)/man{1,5,8}, example config, logrotate
#                  snippet and docs -> $(DOCDIR). Never writes $(SYSCONFDIR) (/etc).
PREFIX      ?= /usr/local
BINDIR      ?= $(PREFIX)/bin
SBINDIR     ?= $(PREFIX)/sbin
SYSCONFDIR  ?= /etc
UNITDIR     ?= $(PREFIX)/lib/systemd/system
SYSUSERSDIR ?= $(PREFIX)/lib/sysusers.d
MANDIR      ?= $(PREFIX)/share/man
DOCDIR      ?= $(PREFIX)/share/doc/picomdm
.PHONY: man
man: bins
	@deploy/mkman.sh build/man $(PROC_BINS) $(TOOL_BINS)
install: bins man
	@DESTDIR="$(DESTDIR)" PREFIX="$(PREFIX)" BINDIR="$(BINDIR)" SBINDIR="$(SBINDIR)" \
	  SYSCONFDIR="$(SYSCONFDIR)" UNITDIR="$(UNITDIR)" SYSUSERSDIR="$(SYSUSERSDIR)" \
	  MANDIR="$(MANDIR)" DOCDIR="$(DOCDIR)" MANSRC=build/man \
	  deploy/install.sh $(PROC_BINS) -- $(TOOL_BINS)

clean:
	rm -rf build bin

-include $(shell find build/$(VARIANT) -name '*.d' 2>/dev/null)
