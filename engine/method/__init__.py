"""The paper's method: NAM's token masking and noise scores (nam.py), the sharded noise table, the losses (SDM, ID,
MLM) and IRRA's MLM input. No deepspeed; other ranks are reached only through engine/runtime/collectives.py."""
