"""RabbitMQ: topology as data, the publisher, the consumer (the one place that acks) and DLQ tools."""
