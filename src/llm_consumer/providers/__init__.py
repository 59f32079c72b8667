"""Providers behind one-method Protocols; each translates vendor errors into llm_consumer.errors."""
