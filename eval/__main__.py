"""`python -m eval COMMAND ...`: one entry point, one subcommand per tool; each tool parses its own options.

run           retrieval metrics of a model on a dataset split (the default: `python -m eval --checkpoint ...`)
stats         ids, images and captions of every split of a dataset
export        a transformers CLIP folder from a checkpoint
openai-format OpenAI CLIP's state-dict layout (one .pt) from a checkpoint
index         encode a folder of images into a gallery index
search        search a gallery index by description
serve         a local web page over a gallery index
noise-auroc   does NAM's per-token noise find the known wrong words?
plot          a run's training and eval curves
"""

from __future__ import annotations

import argparse
import importlib
import sys

from data.cli_errors import error_boundary

COMMANDS = {  # name -> (module with main(argv), one line of help)
    "run": ("eval.run", "retrieval metrics (R1, R5, R10, mAP, mINP) of a model on a dataset split"),
    "stats": ("eval.stats", "ids, images and captions of every split of a dataset"),
    "export": ("eval.export", "a transformers CLIP folder from a checkpoint"),
    "openai-format": ("eval.openai_format", "OpenAI CLIP's state-dict layout (one .pt) from a checkpoint"),
    "index": ("eval.search.gallery_index", "encode a folder of images into a gallery index"),
    "search": ("eval.search.gallery_search", "search a gallery index by description"),
    "serve": ("eval.search.gallery_server", "a local web page to search a gallery index"),
    "noise-auroc": ("eval.analysis.noise_auroc", "AUROC of NAM's noise for known wrong words against correct ones"),
    "plot": ("eval.plot", "a run's training and eval curves as one PNG"),
}


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m eval", description=__doc__.splitlines()[0])
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_line) in COMMANDS.items():
        # Everything after the command name goes to the tool as it is, options included: no prefix character of
        # this parser (NUL) can start an argument, and -h reaches the tool's own parser.
        command = commands.add_parser(name, help=help_line, add_help=False, prefix_chars="\0")
        command.add_argument("arguments", nargs="*")
    return top


@error_boundary  # each tool has its own too; this one also covers an argument the dispatcher cannot place
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["run", *argv]  # the default command: `python -m eval --checkpoint ...`
    args = parser().parse_args(argv)
    module = importlib.import_module(COMMANDS[args.command][0])
    return module.main(args.arguments)


if __name__ == "__main__":
    sys.exit(main())
