"""Infrastructure below training and evaluation: mesh and shardings, checkpoints and loading
params, safe file writes, data sources, image grids and npz trees; imports no other package
of the project."""
