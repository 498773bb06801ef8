"""Test harness: delivery verification against the raw log, and a fault-injecting Kafka proxy."""
