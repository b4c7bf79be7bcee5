"""The vocabulary every layer shares (errors, keep-alive, inputs, intents, the Service protocol) and
nothing else: no MLX, no HTTP, no files."""
