"""fill-publisher: polls venues' fills endpoints and publishes each fill exactly once to Kafka."""

__version__ = "0.1.0"
