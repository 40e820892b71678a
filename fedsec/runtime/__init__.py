"""Running an experiment: Ray, Flower's simulation engine, the run directory; fedsec as a Flower App."""
