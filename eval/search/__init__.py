"""Person search over a folder of images: index it (gallery_index.py), query it (gallery_search.py), serve a page."""
