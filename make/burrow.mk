# Burrow (the Debian package `burrow`, 1.2.1) and the ZooKeeper it keeps its own state in (jars from
# Maven Central, like Kafka's): tests/testbed/burrow.py. A baseline of the lag benchmark.
BURROW_TESTBED := $(PY) -m tests.testbed.burrow

.PHONY: burrow-jars burrow-up burrow-down burrow-check
burrow-jars: venv apt-deps $(STAMP)/apt-burrow  ## Burrow, and the ZooKeeper jars into $(CACHE)/zookeeper-<version>/libs (once)
	$(Q)cd $(ROOT) && $(BURROW_TESTBED) jars >/dev/null

# The package starts no service here; the test bed runs its own Burrow on free ports either way.
$(STAMP)/apt-burrow: | $(STAMP)/apt
	$(Q)$(call apt_one,burrow)
	$(Q)touch $@

burrow-up: burrow-jars  ## ZooKeeper + Burrow in the background, watching the Kafka of kafka-up
	$(Q)cd $(ROOT) && $(BURROW_TESTBED) up --bootstrap 127.0.0.1:$(KAFKA_PORT)

burrow-down: venv
	$(Q)cd $(ROOT) && $(BURROW_TESTBED) down

burrow-check: burrow-jars kafka-jars workloads  ## what Burrow says about a consumer group on Kafka 4.x
	$(Q)cd $(ROOT) && $(BURROW_TESTBED) check
