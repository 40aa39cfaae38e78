"""The corpus: the default world's generator (world.py), inbox documents read, cleaned and deduplicated
(documents.py, cleaning.py), the held-out split (heldout.py), and the `corpus` stage that writes them (stage.py)
into the files named in files.py."""
