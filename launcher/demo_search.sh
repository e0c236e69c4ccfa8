#!/usr/bin/env bash
# Person search with the trained model: index the synthetic test gallery, then search it for one held-out caption
# and print the top 5 with whether each is the described person (file names carry the identity: p0017_1.jpg).
# Usage: launcher/demo_search.sh RUN_DIR CUHK_PEDES_DIR   (the folder holding reid_raw.json and imgs/test/)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
RUN=${1:?usage: launcher/demo_search.sh RUN_DIR CUHK_PEDES_DIR}
GALLERY=${2:?usage: launcher/demo_search.sh RUN_DIR CUHK_PEDES_DIR}
INDEX="$RUN/test_gallery.index"  # a rerun with the same model only encodes new images

echo "== person search: index $GALLERY/imgs/test, then search it by description"
$PY -m eval index --checkpoint "$RUN" --images "$GALLERY/imgs/test" --out "$INDEX"
# The query: the first caption of the first test image; its person is the p<id> prefix of that file's name.
QUERY_FILE=$($PY -c 'import json, sys; e = [e for e in json.load(open(sys.argv[1])) if e["split"] == "test"][0]
print(e["file_path"].split("/")[-1]); print(e["captions"][0])' "$GALLERY/reid_raw.json")
PERSON=$(head -n1 <<<"$QUERY_FILE" | cut -d_ -f1)
QUERY=$(tail -n +2 <<<"$QUERY_FILE")
echo "query ($PERSON): $QUERY"
$PY -m eval search --index "$INDEX" --top 5 "$QUERY" | while read -r rank score path; do
  if [[ $(basename "$path") == "${PERSON}_"* ]]; then verdict="right person"; else verdict="other person"; fi
  echo "$rank  $score  $path  ($verdict)"
done
