"""A trained model put to use: the stepper and its kernels (stepper, kernels), sampling (sample) and beam search
(beam), and the likelihood of a text (score: what a score is; whole, lines: scoring a text whole or line by line;
heatmap: per-character surprise). Its settings are config/sample.py's. Imports the ground and text."""
