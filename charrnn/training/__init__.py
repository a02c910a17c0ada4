"""Training: the job's setup (job), the loop and its config (loop), the guarded step (step), auto-sizing
(autosize), progress on stderr and metrics.jsonl (progress), and loss curves from it (plot). Imports every stage
below it: the ground, text, checkpoint, generation (previews and evaluation)."""
