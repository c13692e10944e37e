# mglrud — the two commands a new machine needs are `make run` and `make test`.
# Everything they need (Debian packages, a venv, the kernel source, virtme-ng)
# is installed by scripts/install-deps; the test kernel is cached in
# $(MGLRUD_CACHE) (default /var/cache/mglrud), keyed by source, config and patches.

export MGLRUD_CACHE ?= /var/cache/mglrud
VENV := $(MGLRUD_CACHE)/venv
PY := /usr/bin/python3
PYTEST := env PYTHONDONTWRITEBYTECODE=1 PYTHONPATH=$(CURDIR) $(PY) -m pytest -p no:cacheprovider
ARGS ?=

.PHONY: demo run check test test-host test-vm test-vm-stock test-systemd kernel kernel-debug test-vm-debug fixtures install clean-kernel deb image

## run: start mglrud on this machine with the built-in default config (Ctrl-C stops it)
run:
	@scripts/install-deps run
	PYTHONPATH=$(CURDIR) /usr/bin/python3 -m mglrud run $(ARGS)

## demo: memcached's live heatmap with the BPF source, in the test guest; heatmap.png in demo-out/ (ARGS: scripts/demo --help)
demo:
	@scripts/install-deps demo
	scripts/demo $(ARGS)

## check: the preflight table of what this kernel supports
check:
	@scripts/install-deps run
	PYTHONPATH=$(CURDIR) /usr/bin/python3 -m mglrud check

## test: every tier — unit and host integration, the VM tier on the project's kernel (one node,
## two nodes), the stock tier on Debian's own kernel, and mglrud under systemd as PID 1 in the
## guest; then one closing line. Two tracks side by side (scripts/test-all): test-vm, and
## test-host then test-vm-stock then test-systemd (ARGS reaches each tier's make through MAKEFLAGS)
test:
	@scripts/test-all

test-host:
	@scripts/install-deps test
	@mkdir -p .test-results
	$(PYTEST) tests/unit tests/integration --junitxml=.test-results/host.xml $(ARGS)

## test-vm: build (or reuse) the kernel, boot it twice (one node, two nodes), run tests/vm inside
test-vm:
	@scripts/install-deps all
	@mkdir -p .test-results/vm .test-results/vm-numa
	kernel-patch/vm-run.sh --timeout 3000 --out $(CURDIR)/.test-results/vm -- -m "not numa and not stock and not wip" --junitxml=$(CURDIR)/.test-results/vm/junit.xml $(ARGS)
	kernel-patch/vm-run.sh --numa --out $(CURDIR)/.test-results/vm-numa -- -m "numa and not stock and not wip" --junitxml=$(CURDIR)/.test-results/vm-numa/junit.xml $(ARGS)

## test-vm-stock: boot Debian's own newest linux-image-6.1.*-amd64 (no patch; fetched by
## scripts/install-deps stock) and run the `stock` tier: the BPF source's accessed-bit probe
test-vm-stock:
	@scripts/install-deps stock >/dev/null
	@mkdir -p .test-results/vm-stock .test-results/vm-stock-numa
	kernel-patch/vm-run.sh --variant stock --timeout 3600 --out $(CURDIR)/.test-results/vm-stock -- -m "stock and not numa and not wip" --junitxml=$(CURDIR)/.test-results/vm-stock/junit.xml $(ARGS)
	kernel-patch/vm-run.sh --variant stock --numa --timeout 2400 --out $(CURDIR)/.test-results/vm-stock-numa -- -m "stock and numa and not wip" --junitxml=$(CURDIR)/.test-results/vm-stock-numa/junit.xml $(ARGS)

## test-systemd: systemd 252 as PID 1 in the test guest: install, start, reload, watchdog, security
test-systemd:
	@scripts/install-deps all
	@rm -rf .test-results/systemd && mkdir -p .test-results/systemd
	tests/vm/systemd/run.sh $(CURDIR)/.test-results/systemd

## install: the package, the systemd unit and /etc/mglrud/config.yaml (PREFIX, SYSCONFDIR, DESTDIR honoured)
install:
	@scripts/install-deps run
	scripts/install.sh

## deb: dist/mglrud_<version>_all.deb (debian/, lintian-clean; reused while the tree is unchanged).
## Measured on 2 busy cores: 25 s dpkg-buildpackage + 15 s lintian cold, under 1 s reused.
deb:
	@scripts/install-deps deb
	@start=$$(date +%s); scripts/build-deb --copy-to $(CURDIR)/dist >/dev/null && echo "deb: $$(( $$(date +%s) - start )) s"

## image: the container image localhost/mglrud:<version> (scripts/build-image: mmdebstrap root
## filesystem from Debian's archive with the .deb, imported by deploy/container/Containerfile).
## Measured on 2 busy cores: rootfs 180 s with an empty package cache, 100-290 s warm; reused: seconds.
image:
	@scripts/install-deps container
	@start=$$(date +%s); scripts/build-image && echo "image: $$(( $$(date +%s) - start )) s"

## test-vm-debug: the VM tier on a lockdep/KASAN/DEBUG_VM kernel (slow). 4-level paging: with
## vng's TCG CPU (5-level) KASAN reported at boot and lock debugging was off for the run
## (kernel-patch/README.md, "Debug kernel")
test-vm-debug:
	@scripts/install-deps all
	kernel-patch/vm-run.sh --variant debug --timeout 3600 --qemu-opts '-cpu max,la57=off' -- -m "not numa and not stock" $(ARGS)

kernel:
	kernel-patch/build.sh default

kernel-debug:
	kernel-patch/build.sh debug

## fixtures: capture real lru_gen output etc. from the VM into tests/fixtures/
fixtures:
	kernel-patch/capture-fixtures.sh

clean-kernel:
	rm -rf $(MGLRUD_CACHE)/build $(MGLRUD_CACHE)/src
