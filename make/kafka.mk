# Local Kafka (KRaft) from Maven Central jars: tests/testbed/kafka.py. KAFKA_BROKERS=3 starts a
# cluster of three nodes on KAFKA_PORT, KAFKA_PORT+1, KAFKA_PORT+2 instead of the single node.
KAFKA_PORT ?= 9092
KAFKA_BROKERS ?= 1
KAFKA_TESTBED := $(PY) -m tests.testbed.kafka

.PHONY: kafka-jars kafka-up kafka-down kafka-status
kafka-jars: venv apt-deps  ## fetch the Kafka jars into $(CACHE)/kafka-<version>/libs (once)
	$(Q)cd $(ROOT) && $(KAFKA_TESTBED) jars >/dev/null

kafka-up: kafka-jars  ## start Kafka on 127.0.0.1:$(KAFKA_PORT) in the background (no-op if up)
	$(Q)cd $(ROOT) && $(KAFKA_TESTBED) up --port $(KAFKA_PORT) --brokers $(KAFKA_BROKERS)

kafka-down: venv  ## stop the Kafka (broker or cluster) started by kafka-up
	$(Q)cd $(ROOT) && $(KAFKA_TESTBED) down --port $(KAFKA_PORT)

kafka-status: venv
	$(Q)cd $(ROOT) && $(KAFKA_TESTBED) status --port $(KAFKA_PORT)
