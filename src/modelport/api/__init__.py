"""HTTP transport: routes parse requests, call the engine and map errors. Nothing else."""
