"""What a checkpoint is, in one folder: its format and field rules (state, rules), bytes on disk and
verification (files), the safetensors form (safetensors), run directories and their lock (rundir), and the rule
for every other file charrnn writes (outputs). Imports the ground and text (a checkpoint holds a vocabulary)."""
