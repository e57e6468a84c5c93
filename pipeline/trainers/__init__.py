"""What every trainer shares: resumable checkpoints (``state``) and small helpers (``common``).  The trainers
themselves live in their method's package (pipeline/methods/<name>/trainer.py); they take arrays in memory and write
checkpoints, and know nothing of zarr or dask."""
