"""Every setting, declared once: TrainConfig (train), ModelConfig (model), SampleConfig (sample), the seeds'
range (seed), and the declaration itself (settings). At the ground, with no torch, because a checkpoint stores
these configs and checks them (checkpoint/), and the CLI builds its flags from them before torch loads."""
