"""Building LUPerson-MLLM captions with local multimodal LLMs (TDE, docs/method.md).

- `instructions`: the static and dynamic instructions and the template bank (configs/captioning/tde_instructions.yaml),
  and the per-image template choice.
- `images`: the images to caption, from a folder or from packed shards, and their split over ranks.
- `model`: a local vision-language model loaded through transformers; batched generation.
- `store`: the resumable output (append-only part files per rank, failures, the merge into caption JSON).
- `run`: the captioning loop that ties them together; `python -m data.caption` is its command line.
- `tiny_model`: a tiny randomly initialised Qwen2-VL for tests and CPU measurements.
"""
