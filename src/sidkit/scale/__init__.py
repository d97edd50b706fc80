"""Scale-out on existing engines: catalogue-scale encoding on Ray Data (``ray_encode``)."""
