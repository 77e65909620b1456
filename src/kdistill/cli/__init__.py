"""`kdistill <verb>`: a thin command line over the pipeline."""
