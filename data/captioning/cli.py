"""Caption images with a local multimodal LLM, static or template-based dynamic instruction (TDE, docs/method.md).

    python -m data.captioning --images DIR | --shards DIR --model PATH --mode static|dynamic --out Td-MODEL.json

Writes OUT (image file name -> caption, ready for data.pack), OUT's .log.jsonl (template id and dirty flag per
image) and .failures.jsonl. Rerun the same command to resume; run N processes (torchrun, the deepspeed launcher,
or RANK=r WORLD_SIZE=N by hand) to split the images. See data/captioning/ for the parts."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # models load from a local folder; nothing is fetched at run time

from data.captioning.instructions import DEFAULT_INSTRUCTIONS, MODES, CaptioningError  # noqa: E402
from data.captioning.model import DTYPES, Decoding  # noqa: E402
from data.captioning.run import CaptionJob, caption  # noqa: E402
from data.captioning.store import CaptionStore  # noqa: E402
from data.cli_errors import error_boundary, non_negative_int, positive_int  # noqa: E402
from data.outputs import check_output_file, output_argument  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m data.captioning", description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--images", type=Path, help="folder of .jpg/.png images")
    source.add_argument("--shards", type=Path, help="packed shard folder (manifest.json + webdataset tars)")
    parser.add_argument("--model", type=Path, help="local transformers folder of an image-text-to-text model")
    parser.add_argument("--mode", choices=MODES, help="static instruction, or dynamic with one template per image")
    output_argument(
        parser, "--out", kind="file", required=True,
        help="caption JSON to write, e.g. Td-qwen2vl.json; only a file this tool wrote is resumed or replaced",
    )  # fmt: skip
    parser.add_argument("--instructions", type=Path, default=DEFAULT_INSTRUCTIONS, help="instructions + templates")
    parser.add_argument("--seed", type=int, default=0, help="with the file name, picks each image's template")
    parser.add_argument("--batch-size", type=positive_int, default=8)
    parser.add_argument("--max-new-tokens", type=positive_int, default=Decoding.max_new_tokens)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--repetition-penalty", type=float, default=1.0)
    parser.add_argument("--device", default="auto", help="auto (this rank's GPU, else cpu), cpu, cuda:0, ...")
    parser.add_argument("--dtype", choices=["auto", *DTYPES], default="auto", help="auto = bf16 on GPU, fp32 on CPU")
    parser.add_argument("--rank", type=non_negative_int, default=int(os.environ.get("RANK", 0)))
    parser.add_argument("--world-size", type=positive_int, default=int(os.environ.get("WORLD_SIZE", 1)))
    parser.add_argument("--retry-failed", action="store_true", help="caption the images recorded as failed again")
    parser.add_argument(
        "--max-images", type=positive_int, help="stop after this many images (a trial run); rerun to go on"
    )
    parser.add_argument("--merge", action="store_true", help="only merge the part files written so far into OUT")
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


@error_boundary
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Resuming is decided by CaptionStore (only its own files); here the output must not be one of the inputs.
    inputs = [args.images, args.shards, args.model, args.instructions]
    check_output_file(args.out, flag="--out", overwrite=True, protect=[path for path in inputs if path is not None])
    try:
        if args.merge:
            merged = CaptionStore(args.out).merge()
        else:
            if args.model is None or args.mode is None:
                raise CaptioningError("--model and --mode are required (unless --merge)")
            decoding = Decoding(args.max_new_tokens, args.temperature, args.top_p, args.repetition_penalty)
            job = CaptionJob(
                out=args.out, model=args.model, mode=args.mode, images=args.images, shards=args.shards,
                instructions=args.instructions, seed=args.seed, batch_size=args.batch_size, decoding=decoding,
                device=args.device, dtype=args.dtype, rank=args.rank, world_size=args.world_size,
                retry_failed=args.retry_failed, max_images=args.max_images, progress=not args.no_progress,
            )  # fmt: skip
            if args.mode == "dynamic" and not args.out.name.startswith("Td"):
                print("note: data.pack treats a file as dynamic only if its name starts with Td", file=sys.stderr)
            summary = caption(job)
            print(
                f"rank {job.rank}/{job.world_size}: {summary.captioned} captioned, {summary.failed} failed, "
                f"{summary.flagged} flagged (slot or markup left) in {summary.seconds:.1f} s "
                f"({summary.images_per_second:.2f} images/s); {summary.done_before} of {summary.assigned} done before"
                + ("" if summary.complete else "; stopped by --max-images, rerun to continue")
            )
            merged = summary.merged
    except CaptioningError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if merged is not None:
        print(
            f"wrote {merged.out}: {merged.captions} captions ({merged.flagged} flagged), {merged.failed} failed "
            f"(listed in {CaptionStore(merged.out).failures.name}; rerun with --retry-failed to try them again)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
