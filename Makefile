# qsnap and libqcow2. GNU make. `make` builds the libraries and the qsnap
# program; `make test` installs what is missing, builds with -Werror and runs
# every test; `make demo` shows qsnap at work. See README.md.

CC      ?= cc
CFLAGS  ?= -O2 -g
PREFIX  ?= /usr/local
BINDIR  ?= $(PREFIX)/bin
LIBDIR  ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
MANDIR  ?= $(PREFIX)/share/man
PKGCONFIGDIR ?= $(LIBDIR)/pkgconfig
COMPLETIONDIR ?= $(PREFIX)/share/bash-completion/completions
DESTDIR ?=

BUILD   ?= build/release
SOVERSION := $(shell sed -n 's/^\#define QCOW2_SOVERSION \([0-9]*\)/\1/p' include/qcow2/version.h)
VERSION := $(shell sed -n 's/^\#define QCOW2_VERSION_STRING "\(.*\)"/\1/p' include/qcow2/version.h)

WARNFLAGS = -std=c11 -Wall -Wextra -Wshadow -Wcast-qual -Wcast-align \
	-Wstrict-prototypes -Wmissing-prototypes -Wundef -Wpointer-arith -Wvla \
	-Wformat=2 -Winit-self -Wwrite-strings -Wredundant-decls -Wswitch-enum \
	-Wimplicit-fallthrough
# Offset arithmetic lives in qcow2/: there, implicit narrowing is an error too.
LIBWARN = -Wconversion -Wsign-conversion
override CPPFLAGS += -D_GNU_SOURCE -D_FILE_OFFSET_BITS=64 -Iinclude
override CFLAGS += $(WARNFLAGS) $(MOREFLAGS) -MMD -MP
LDLIBS_LIB = -lzstd -lz -lxxhash

LIB_SRCS  := $(wildcard qcow2/*.c)
SNAP_SRCS := $(wildcard snapshot/*.c)
CLI_SRCS  := $(wildcard cli/*.c)
HELP_SRCS := $(wildcard tests/helpers/*.c)
TEST_SRCS := $(wildcard tests/qcow2/test_*.c tests/snapshot/test_*.c tests/cli/test_*.c)
FUZZ_SRCS := $(filter-out fuzz/fuzz_driver.c fuzz/fuzz_helpers.c,$(wildcard fuzz/*.c))
BENCH_SRCS := $(filter-out bench/bench_util.c,$(wildcard bench/bench_*.c))

LIB_OBJS  := $(LIB_SRCS:%.c=$(BUILD)/%.o)
SNAP_OBJS := $(SNAP_SRCS:%.c=$(BUILD)/%.o)
CLI_OBJS  := $(CLI_SRCS:%.c=$(BUILD)/%.o)
HELP_OBJS := $(HELP_SRCS:%.c=$(BUILD)/%.o)
TEST_BINS := $(patsubst %.c,$(BUILD)/%,$(TEST_SRCS))
FUZZ_BINS := $(patsubst fuzz/%.c,$(BUILD)/fuzz/replay_%,$(FUZZ_SRCS))

STATIC  := $(BUILD)/libqcow2.a
SHARED  := $(BUILD)/libqcow2.so.$(SOVERSION)
SNAP_STATIC := $(BUILD)/libqsnap.a
SNAP_SHARED := $(BUILD)/libqsnap.so.$(SOVERSION)
QSNAP   := $(BUILD)/qsnap

.PHONY: all lib check test test-unit test-cli test-interop test-damaged test-fuzz \
	headertest checksymbols demo deps no-nbdkit no-fuse install-nbdkit asan ubsan fuzz fuzz-run fuzz-seeds bench bench-bins clean \
	install uninstall install-lib install-headers install-pc install-bin install-man install-completion

all: $(STATIC) $(SHARED) $(SNAP_STATIC) $(SNAP_SHARED) $(QSNAP) $(BUILD)/qcow2.pc $(BUILD)/qsnap.pc

lib: $(STATIC) $(SHARED) $(SNAP_STATIC) $(SNAP_SHARED)

$(BUILD)/qcow2/%.o: qcow2/%.c
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) $(CFLAGS) $(LIBWARN) -fPIC -fvisibility=hidden -c -o $@ $<

$(BUILD)/snapshot/%.o: snapshot/%.c
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) $(CFLAGS) -fPIC -fvisibility=hidden -c -o $@ $<

$(BUILD)/%.o: %.c
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) $(CFLAGS) -c -o $@ $<

# qsnap's own objects are position-independent whatever the compiler's default: a -static-pie
# link needs them so.
$(CLI_OBJS): override CFLAGS += -fPIE

$(STATIC): $(LIB_OBJS)
	@mkdir -p $(@D)
	rm -f $@
	$(AR) rcs $@ $^

$(SHARED): $(LIB_OBJS)
	$(CC) $(CFLAGS) -shared -Wl,-soname,libqcow2.so.$(SOVERSION) -o $@ $^ $(LDFLAGS) $(LDLIBS_LIB)
	ln -sf libqcow2.so.$(SOVERSION) $(BUILD)/libqcow2.so

$(SNAP_STATIC): $(SNAP_OBJS)
	@mkdir -p $(@D)
	rm -f $@
	$(AR) rcs $@ $^

$(SNAP_SHARED): $(SNAP_OBJS) $(SHARED)
	$(CC) $(CFLAGS) -shared -Wl,-soname,libqsnap.so.$(SOVERSION) -o $@ $(SNAP_OBJS) \
	    -L$(BUILD) -l:libqcow2.so.$(SOVERSION) $(LDFLAGS)
	ln -sf libqsnap.so.$(SOVERSION) $(BUILD)/libqsnap.so

# qsnap is linked -static-pie where the system allows it (see "how qsnap is linked" below).
$(QSNAP): $(CLI_OBJS) $(SNAP_STATIC) $(STATIC) $(BUILD)/qsnap.link
	@echo "note: $(QSNAP_LINK_NOTE)"
	$(if $(QSNAP_LINK_FLAGS),sh scripts/link-static.sh) $(CC) $(CFLAGS) $(QSNAP_LINK_FLAGS) -o $@ \
	    $(CLI_OBJS) $(SNAP_STATIC) $(STATIC) $(LDFLAGS) $(QSNAP_LIBS)

$(BUILD)/%.pc: %.pc.in include/qcow2/version.h
	@mkdir -p $(@D)
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@LIBDIR@|$(LIBDIR)|' -e 's|@INCLUDEDIR@|$(INCLUDEDIR)|' \
	    -e 's|@VERSION@|$(VERSION)|' $< > $@

# The tree fixture reaches into the store (tf_meta_as_text).
$(BUILD)/tests/helpers/tree_fixture.o: CPPFLAGS += -Isnapshot

# One Criterion binary per suite file.
$(BUILD)/tests/%: tests/%.c $(HELP_OBJS) $(SNAP_STATIC) $(STATIC)
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) -Iqcow2 -Isnapshot -Itests/helpers $(CFLAGS) -o $@ $< $(HELP_OBJS) \
	    $(SNAP_STATIC) $(STATIC) $(LDFLAGS) -lcriterion $(LDLIBS_LIB)

# Corpus replay: each fuzz target linked with the standalone driver (gcc, no libFuzzer).
# The targets use memfs only (the other helpers need Criterion).
FUZZ_HELP_SRCS := tests/helpers/memfs.c
$(BUILD)/fuzz/replay_%: fuzz/%.c fuzz/fuzz_driver.c $(wildcard fuzz/*.h) $(FUZZ_HELP_SRCS:%.c=$(BUILD)/%.o) \
	    $(SNAP_STATIC) $(STATIC)
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) -Iqcow2 -Isnapshot -Itests/helpers -Ifuzz $(CFLAGS) -o $@ $< fuzz/fuzz_driver.c \
	    $(FUZZ_HELP_SRCS:%.c=$(BUILD)/%.o) $(SNAP_STATIC) $(STATIC) $(LDFLAGS) $(LDLIBS_LIB)

deps:
	@sh scripts/deps.sh

# ---- tests ---------------------------------------------------------------
# `make test` is the full suite; `make check` the quick one. T=name runs one suite.
test: deps
	@$(MAKE) --no-print-directory MOREFLAGS="-g -Werror $(MOREFLAGS)" all $(TEST_BINS) $(FUZZ_BINS)
	@$(MAKE) --no-print-directory MOREFLAGS="-g -Werror $(MOREFLAGS)" run-tests

check: deps
	@$(MAKE) --no-print-directory MOREFLAGS="-g -Werror $(MOREFLAGS)" all $(TEST_BINS)
	@$(MAKE) --no-print-directory MOREFLAGS="-g -Werror $(MOREFLAGS)" test-unit

run-tests:
	@BUILD=$(BUILD) T="$(T)" sh tests/run.sh

test-unit:
	@BUILD=$(BUILD) T="$(T)" ONLY=unit sh tests/run.sh

headertest:
	$(CC) -Iinclude -std=c11 -pedantic -Wall -Wextra -Werror -fsyntax-only tests/headertest.c
	c++ -Iinclude -std=c++11 -pedantic -Wall -Wextra -Werror -fsyntax-only -x c++ tests/headertest.c

checksymbols: $(STATIC) $(SHARED) $(SNAP_STATIC) $(SNAP_SHARED)
	@sh scripts/checksymbols.sh $(STATIC) $(SHARED) qcow2
	@sh scripts/checksymbols.sh $(SNAP_STATIC) $(SNAP_SHARED) qsnap

demo: deps
	@$(MAKE) --no-print-directory all
	@BUILD=$(BUILD) sh scripts/demo.sh

asan:
	@$(MAKE) --no-print-directory test BUILD=build/asan CC=clang \
	    MOREFLAGS="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer" \
	    LDFLAGS="-fsanitize=address,undefined"

ubsan:
	@$(MAKE) --no-print-directory test BUILD=build/ubsan \
	    MOREFLAGS="-fsanitize=undefined -fno-sanitize-recover=all -fno-omit-frame-pointer" \
	    LDFLAGS="-fsanitize=undefined"

# libFuzzer builds: make fuzz; make fuzz-run T=header_open SECS=60
FUZZ_CFLAGS = -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined
fuzz:
	@for f in $(FUZZ_SRCS); do t=$$(basename $$f .c); mkdir -p build/fuzz; \
	  echo "clang $$t"; \
	  clang $(CPPFLAGS) -Iqcow2 -Isnapshot -Itests/helpers -Ifuzz $(FUZZ_CFLAGS) -o build/fuzz/$$t $$f \
	    $(LIB_SRCS) $(SNAP_SRCS) $(FUZZ_HELP_SRCS) $(LDLIBS_LIB) || exit 1; done

fuzz-run: fuzz
	mkdir -p build/fuzz/corpus-$(T)
	ASAN_OPTIONS=allocator_may_return_null=1 build/fuzz/$(T) -max_total_time=$(or $(SECS),60) \
	    -rss_limit_mb=2048 build/fuzz/corpus-$(T) fuzz/corpora/$(T)

# Regenerate the committed seed corpora from qemu-img-made images (and, for qsnap_log, stores
# the qsnap command makes).
fuzz-seeds: $(STATIC) $(SNAP_STATIC) $(QSNAP)
	@sh scripts/fuzz-seeds.sh

# Benchmarks (never part of `make test`): standalone programs linked with the static library.
BENCH_BINS := $(patsubst bench/%.c,$(BUILD)/bench/%,$(BENCH_SRCS))

$(BUILD)/bench/%: bench/%.c $(BUILD)/bench/bench_util.o $(STATIC)
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) -Iqcow2 -Ibench $(CFLAGS) -o $@ $< $(BUILD)/bench/bench_util.o $(STATIC) \
	    $(LDFLAGS) $(LDLIBS_LIB)

# timeit: runs one command and prints its wall and CPU ms (bench_tree.sh times qsnap with it).
$(BUILD)/bench/timeit: bench/timeit.c
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) $(CFLAGS) -o $@ $< $(LDFLAGS)

bench-bins: $(BUILD)/bench/bench_util.o $(BENCH_BINS) $(BUILD)/bench/timeit

bench:
	@$(MAKE) --no-print-directory all bench-bins BUILD=build/bench CFLAGS="-O2 -DNDEBUG"
	@BUILD=build/bench sh bench/run.sh

# ---- optional parts: the nbdkit plugin and the FUSE view ------------------
# Built only where their headers are installed; `make` says so when they are not.
NBDKIT_PLUGIN := $(BUILD)/nbdkit-qsnap-plugin.so
NBDKIT_PLUGINDIR ?= $(or $(shell pkg-config --variable=plugindir nbdkit 2>/dev/null),$(LIBDIR)/nbdkit/plugins)
ifneq ($(wildcard /usr/include/nbdkit-plugin.h),)
all: $(NBDKIT_PLUGIN)
install: install-nbdkit
else
all: no-nbdkit
endif
no-nbdkit:
	@echo "note: /usr/include/nbdkit-plugin.h not found: nbdkit-qsnap-plugin.so is not built (install nbdkit-plugin-dev)"
$(NBDKIT_PLUGIN): nbdkit/qsnap_plugin.c $(SNAP_STATIC) $(STATIC)
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) $(CFLAGS) -fPIC -shared -o $@ $< $(SNAP_STATIC) $(STATIC) $(LDFLAGS) \
	    -Wl,--exclude-libs,ALL $(LDLIBS_LIB) -lpthread
install-nbdkit: $(NBDKIT_PLUGIN)
	install -d $(DESTDIR)$(NBDKIT_PLUGINDIR)
	install -m 755 $(NBDKIT_PLUGIN) $(DESTDIR)$(NBDKIT_PLUGINDIR)/

ifneq ($(wildcard /usr/include/fuse3/fuse.h),)
$(BUILD)/cli/cmd_mount.o: override CPPFLAGS += -DQSNAP_HAVE_FUSE $(shell pkg-config --cflags fuse3)
FUSE_LIBS = $(or $(shell pkg-config --libs fuse3),-lfuse3)
FUSE_STATIC_LIBS = $(or $(shell pkg-config --static --libs fuse3),-lfuse3 -lpthread -ldl -lrt)
else
all: no-fuse
endif
no-fuse:
	@echo "note: /usr/include/fuse3/fuse.h not found: qsnap mount is built without FUSE (install libfuse3-dev)"

# ---- how qsnap is linked ----------------------------------------------------
# Each tree command is one short process: linked -static-pie, qsnap starts
# without the dynamic loader's work (mapping libc, libzstd, libz, libxxhash and
# libfuse3, relocating, looking symbols up), about 1.7 ms of CPU less per
# command. STATIC_CLI=auto (the default): -static-pie when the compiler finds
# the static C library and the archive of every library qsnap uses, dynamic
# otherwise; yes: -static-pie or stop with an error; no: dynamic (for
# distributions that want shared libraries). Sanitizer builds (-fsanitize in
# CFLAGS, MOREFLAGS or LDFLAGS) link dynamically; so do the test, fuzz and
# bench programs, libqcow2.so, libqsnap.so and the nbdkit plugin, whatever
# STATIC_CLI says. The choice is kept in BUILD/qsnap.link, so that changing it
# links qsnap again.
STATIC_CLI ?= auto
QSNAP_DYN_LIBS = $(LDLIBS_LIB) $(FUSE_LIBS) -lm
QSNAP_STATIC_LIBS = $(LDLIBS_LIB) $(FUSE_STATIC_LIBS) -lpthread -lm
# The files a -static-pie link needs: the C library's start file and archive, then one
# archive per -l. ($(CC) -print-file-name prints the bare name of a file it cannot find.)
QSNAP_STATIC_FILES = rcrt1.o libc.a $(sort $(patsubst -l%,lib%.a,$(filter -l%,$(QSNAP_STATIC_LIBS))))
# Evaluated once, and only when qsnap is linked.
QSNAP_MISSING = $(eval QSNAP_MISSING := $$(strip $$(foreach f,$$(QSNAP_STATIC_FILES),$$(if \
    $$(filter /%,$$(shell $$(CC) -print-file-name=$$(f) 2>/dev/null)),,$$(f)))))$(QSNAP_MISSING)
QSNAP_SANITIZED = $(findstring -fsanitize,$(CFLAGS) $(LDFLAGS))
QSNAP_LINK = $(strip \
    $(if $(filter-out auto yes no,$(STATIC_CLI)),error STATIC_CLI=$(STATIC_CLI): say auto$(,) yes or no,\
    $(if $(filter no,$(STATIC_CLI)),dynamic,\
    $(if $(QSNAP_SANITIZED),$(if $(filter yes,$(STATIC_CLI)),error STATIC_CLI=yes: a sanitizer build \
        (-fsanitize) cannot link qsnap statically,dynamic-san),\
    $(if $(QSNAP_MISSING),$(if $(filter yes,$(STATIC_CLI)),error STATIC_CLI=yes: $(CC) finds no \
        $(QSNAP_MISSING) (install the -dev packages of the C library and of the libraries qsnap uses),\
        dynamic-missing),static)))))
, := ,
QSNAP_LINK_FLAGS = $(if $(filter static,$(QSNAP_LINK)),-static-pie)
QSNAP_LIBS = $(if $(filter static,$(QSNAP_LINK)),$(QSNAP_STATIC_LIBS),$(QSNAP_DYN_LIBS))
QSNAP_LINK_NOTE = $(strip $(if $(filter static,$(QSNAP_LINK)),qsnap is linked -static-pie (make \
    STATIC_CLI=no links it dynamically),$(if $(filter dynamic,$(QSNAP_LINK)),qsnap is linked \
    dynamically (STATIC_CLI=no),$(if $(filter dynamic-san,$(QSNAP_LINK)),qsnap is linked \
    dynamically (a sanitizer build),qsnap is linked dynamically: $(CC) finds no $(QSNAP_MISSING) \
    for a static link))))
# Written only when the choice changed (the link depends on it).
$(BUILD)/qsnap.link: FORCE
	$(if $(filter error,$(firstword $(QSNAP_LINK))),$(error $(wordlist 2,999,$(QSNAP_LINK))))
	@mkdir -p $(@D)
	@echo '$(QSNAP_LINK) $(QSNAP_LINK_FLAGS) $(QSNAP_LIBS)' | cmp -s - $@ || \
	    echo '$(QSNAP_LINK) $(QSNAP_LINK_FLAGS) $(QSNAP_LIBS)' >$@
FORCE:
.PHONY: FORCE

# ---- install -------------------------------------------------------------
install: install-lib install-headers install-pc install-bin install-man install-completion

install-lib: $(STATIC) $(SHARED) $(SNAP_STATIC) $(SNAP_SHARED)
	install -d $(DESTDIR)$(LIBDIR)
	install -m 644 $(STATIC) $(SNAP_STATIC) $(DESTDIR)$(LIBDIR)/
	install -m 755 $(SHARED) $(SNAP_SHARED) $(DESTDIR)$(LIBDIR)/
	ln -sf libqcow2.so.$(SOVERSION) $(DESTDIR)$(LIBDIR)/libqcow2.so
	ln -sf libqsnap.so.$(SOVERSION) $(DESTDIR)$(LIBDIR)/libqsnap.so

install-headers:
	install -d $(DESTDIR)$(INCLUDEDIR)/qcow2/sys $(DESTDIR)$(INCLUDEDIR)/qsnap
	install -m 644 include/qcow2/*.h $(DESTDIR)$(INCLUDEDIR)/qcow2/
	install -m 644 include/qcow2/sys/*.h $(DESTDIR)$(INCLUDEDIR)/qcow2/sys/
	install -m 644 include/qsnap/*.h $(DESTDIR)$(INCLUDEDIR)/qsnap/

# Made again at install time: the paths in them are those of this install (PREFIX, LIBDIR...).
install-pc:
	install -d $(DESTDIR)$(PKGCONFIGDIR)
	for pc in qcow2 qsnap; do \
	    sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@LIBDIR@|$(LIBDIR)|' -e 's|@INCLUDEDIR@|$(INCLUDEDIR)|' \
	        -e 's|@VERSION@|$(VERSION)|' $$pc.pc.in > $(DESTDIR)$(PKGCONFIGDIR)/$$pc.pc && \
	    chmod 644 $(DESTDIR)$(PKGCONFIGDIR)/$$pc.pc || exit 1; \
	done

install-bin: $(QSNAP)
	install -d $(DESTDIR)$(BINDIR)
	install -m 755 $(QSNAP) $(DESTDIR)$(BINDIR)/

install-man:
	install -d $(DESTDIR)$(MANDIR)/man1
	install -m 644 docs/qsnap.1 $(DESTDIR)$(MANDIR)/man1/

install-completion:
	install -d $(DESTDIR)$(COMPLETIONDIR)
	install -m 644 completion/qsnap.bash $(DESTDIR)$(COMPLETIONDIR)/qsnap

uninstall:
	rm -f $(DESTDIR)$(LIBDIR)/libqcow2.a $(DESTDIR)$(LIBDIR)/libqcow2.so \
	    $(DESTDIR)$(LIBDIR)/libqcow2.so.$(SOVERSION) $(DESTDIR)$(BINDIR)/qsnap \
	    $(DESTDIR)$(LIBDIR)/libqsnap.a $(DESTDIR)$(LIBDIR)/libqsnap.so \
	    $(DESTDIR)$(LIBDIR)/libqsnap.so.$(SOVERSION) \
	    $(DESTDIR)$(PKGCONFIGDIR)/qcow2.pc $(DESTDIR)$(PKGCONFIGDIR)/qsnap.pc \
	    $(DESTDIR)$(MANDIR)/man1/qsnap.1 $(DESTDIR)$(COMPLETIONDIR)/qsnap \
	    $(DESTDIR)$(NBDKIT_PLUGINDIR)/nbdkit-qsnap-plugin.so
	rm -rf $(DESTDIR)$(INCLUDEDIR)/qcow2 $(DESTDIR)$(INCLUDEDIR)/qsnap

clean:
	rm -rf build

-include $(shell find build -name '*.d' 2>/dev/null)
