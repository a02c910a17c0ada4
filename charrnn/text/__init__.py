"""Text in: sources read as strict streaming UTF-8 (files, directories, stdin, named corpora), the vocabulary,
the encoder and its cache, and batching for training. Imports only the ground (errors, display)."""
