# Local single-node Kafka (KRaft) from Maven Central jars: tests/testbed/kafka.py.
KAFKA_PORT ?= 9092
KAFKA_TESTBED := $(PY) -m tests.testbed.kafka

.PHONY: kafka-jars kafka-up kafka-down kafka-status
kafka-jars: venv apt-deps  ## fetch the Kafka jars into $(CACHE)/kafka-<version>/libs (once)
	$(Q)cd $(ROOT) && $(KAFKA_TESTBED) jars >/dev/null

kafka-up: kafka-jars  ## start Kafka on 127.0.0.1:$(KAFKA_PORT) in the background (no-op if up)
	$(Q)cd $(ROOT) && $(KAFKA_TESTBED) up --port $(KAFKA_PORT)

kafka-down: venv  ## stop the Kafka started by kafka-up
	$(Q)cd $(ROOT) && $(KAFKA_TESTBED) down --port $(KAFKA_PORT)

kafka-status: venv
	$(Q)cd $(ROOT) && $(KAFKA_TESTBED) status --port $(KAFKA_PORT)
