"""A trained model put to use: the stepper and its kernels, sampling and beam search (sample), and the
likelihood of a text (score). Imports the ground and text."""
