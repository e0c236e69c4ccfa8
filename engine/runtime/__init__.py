"""The training runtime around the model and the method: the loop (trainer.py), DeepSpeed and the process group,
the one seam to other ranks (collectives.py), checkpoints, run folders, preemption, liveness, logging."""
