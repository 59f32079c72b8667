from llm_consumer.cli import main

main()
