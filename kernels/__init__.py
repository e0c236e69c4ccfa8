"""Fused operations of the method. Each op `<op>` comes as a family: `<op>_triton.py` (the Triton kernel and a
launcher that validates its input), `<op>_ref.py` (the PyTorch reference, also the CPU path) and `<op>.py` (the
dispatcher, which takes the implementation the caller names)."""
