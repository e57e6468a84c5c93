"""Training loops. They take arrays in memory and write checkpoints; no zarr, no dask."""
