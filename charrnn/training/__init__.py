"""Training: the job's setup (job) into the typed Setup (setup), the loop (loop) with its schedule (schedule),
time budget (budget), evaluation and previews (evaluation) and guarded step (step), auto-sizing (autosize),
progress on stderr and metrics.jsonl (progress), and loss curves from it (plot). Its settings are
config/train.py's. Imports every stage below it: the ground, text, checkpoint, generation."""
