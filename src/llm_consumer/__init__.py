"""llm-consumer: the LLM service of the D&D character-creator platform."""

__version__ = "0.1.0"
