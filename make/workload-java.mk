# Java (kafka-clients) client workload: tests/workloads/java -> tests/workloads/java/target/workload.jar
WORKLOAD_JAVA_DIR := $(ROOT)/tests/workloads/java
WORKLOAD_JAVA_JAR := $(WORKLOAD_JAVA_DIR)/target/workload.jar
WORKLOAD_JAVA_SRC := $(WORKLOAD_JAVA_DIR)/pom.xml $(shell find $(WORKLOAD_JAVA_DIR)/src -type f 2>/dev/null)

.PHONY: workload-java
workload-java: $(WORKLOAD_JAVA_JAR)  ## build the Java workload jar (only when its sources changed)

$(WORKLOAD_JAVA_JAR): $(WORKLOAD_JAVA_SRC) | apt-deps
	$(Q)echo "building $(patsubst $(ROOT)/%,%,$@)"
	$(Q)mvn -q -B -f $(WORKLOAD_JAVA_DIR)/pom.xml package
	$(Q)touch $@
