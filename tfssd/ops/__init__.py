"""Box operations in the canonical format: normalised [ymin, xmin, ymax, xmax]."""
