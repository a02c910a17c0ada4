"""Text in: sources (files, directories, stdin, named corpora and their downloads) read by the one strict streaming
UTF-8 reader (utf8), the vocabulary, the two-pass encoder and its cache, and batching for training. Imports only
the ground (errors, display, version)."""
