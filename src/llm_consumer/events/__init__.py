"""The wire contract: the CloudEvents envelope, request, result and control event models."""
