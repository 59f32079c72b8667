"""RabbitMQ: topology as data, publisher, consumer (the one place that acks), DLQ tools."""
