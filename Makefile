# hostkv build entry points.  `make rpms` -> dist/hostkv-{agent,host,cobbler}-V-R.noarch.rpm
# + dist/hostkv-V-R.src.rpm + dist/hostkv-cobbler-V-R.src.rpm (packaging/README.md)
RELEASE ?= 1
DIST ?= dist

.PHONY: rpms clean

rpms:
	packaging/build-rpms.sh --dist $(DIST) --release $(RELEASE)

clean:
	rm -rf $(DIST)/hostkv-*.rpm build/agent-payload
